"""Every registered plugin model (a sixth one is covered for free): one epoch with saved=True, the saved
checkpoint re-evaluated with test_only gives identical metrics, and every file loads with weights_only=True."""

import pytest
import torch

from conftest import write_inter
from recbole_timeplug.registry import PLUGIN_MODELS
from recbole_timeplug.quick_start import run_recbole

# Small for every model; keys a model does not read are ignored.
TINY_ANY = {
    "hidden_size": 16, "embedding_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 10, "n_interests": 3, "k_interests": 3, "region_size": 3,
}


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin_models")
    write_inter(str(root / "tiny" / "tiny.inter"), n_users=60, n_items=50, min_len=8, max_len=14)
    return str(root)


@pytest.mark.parametrize("model", sorted(PLUGIN_MODELS))
def test_train_save_reevaluate_and_load_weights_only(model, data_path, tmp_path):
    config = {
        "model": model, "dataset": "tiny", "data_path": data_path, "checkpoint_dir": str(tmp_path / "saved"),
        "epochs": 1, "state": "ERROR", "show_progress": False, "train_batch_size": 128, "eval_batch_size": 512,
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", **TINY_ANY,
    }  # no load_col: time-aware models get the time field by default
    trained = run_recbole(config_dict=config, saved=True)
    assert trained["saved_model_file"] and trained["last_model_file"]
    for path in (trained["saved_model_file"], trained["last_model_file"]):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert payload["model"] == model and payload["state_dict"]
    again = run_recbole(config_dict={"checkpoint_path": trained["saved_model_file"], "test_only": True,
                                     "state": "ERROR", "show_progress": False})
    assert again["test_result"] == trained["test_result"]
    assert again["best_valid_result"] == trained["best_valid_result"]
    # evaluating reserved a checkpoint name it never wrote: its empty placeholder is gone again
    saved = tmp_path / "saved"
    assert sorted(saved.glob("*.pth")) and not [f.name for f in saved.glob("*.pth") if f.stat().st_size == 0]
