"""Safe and exact checkpoints: weights_only loading, exact resume, no overwrite, legacy files, errors."""

import hashlib
import os

import pytest
import torch

from recbole_timeplug.checkpoint import capture_rng_state, restore_rng_state
from recbole_timeplug.errors import CheckpointError
from recbole_timeplug.quick_start import run_recbole


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(5)
    state = capture_rng_state(gen)
    torch.save(state, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=gen)  # move every stream on
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True), gen)
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    assert again == expected


def test_resume_after_one_epoch_equals_uninterrupted_run(tiny_config):
    straight = run_recbole(config_dict=dict(tiny_config, epochs=3))

    first = run_recbole(config_dict=dict(tiny_config, epochs=1))
    last = first["last_model_file"]
    assert last.endswith("-last.pth") and os.path.isfile(last) and os.path.isfile(first["saved_model_file"])
    digest = _sha(last)

    resumed = run_recbole(config_dict=dict(tiny_config, epochs=3, checkpoint_path=last))

    assert resumed["best_valid_result"] == straight["best_valid_result"]
    assert resumed["test_result"] == straight["test_result"]
    assert resumed["best_valid_score"] == straight["best_valid_score"]
    # resuming writes new files and never touches the one it came from
    assert _sha(last) == digest
    assert resumed["saved_model_file"] != first["saved_model_file"]
    assert resumed["last_model_file"] != last


def test_checkpoint_loads_weights_only_and_holds_only_plain_values(tiny_config):
    result = run_recbole(config_dict=dict(tiny_config, epochs=1))
    for path in (result["saved_model_file"], result["last_model_file"]):
        payload = torch.load(path, weights_only=True)  # raises if anything but tensors/primitives is inside
        assert payload["format"] == "recbole_timeplug"
        assert payload["model"] == "SASRec" and isinstance(payload["config"], dict)
        assert payload["config"]["hidden_size"] == 16
        assert isinstance(payload["rng"]["torch"], torch.Tensor)
        assert "generator" in payload["rng"]


def test_test_only_reproduces_training_metrics(tiny_config):
    trained = run_recbole(config_dict=dict(tiny_config))
    # a fresh run needs nothing but the checkpoint: model, dataset and settings come from the file
    evaluated = run_recbole(config_dict={"checkpoint_path": trained["saved_model_file"], "test_only": True})
    assert evaluated["test_result"] == trained["test_result"]
    assert evaluated["best_valid_result"] == trained["best_valid_result"]


def _legacy_checkpoint(tiny_config, path):
    """A checkpoint in RecBole's own format (pickled Config, protocol 4), written by RecBole's Trainer."""
    from recbole.config import Config as RecBoleConfig
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer as RecBoleTrainer

    config = RecBoleConfig(model="SASRec", dataset=tiny_config["dataset"], config_dict=dict(tiny_config, train_neg_sample_args=None))
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = SASRec(config, train_data._dataset)
    trainer = RecBoleTrainer(config, model)
    trainer._save_checkpoint(0, verbose=False, saved_model_file=str(path))
    return str(path)


def test_legacy_recbole_checkpoint_refused_without_trust_flag(tiny_config, tmp_path):
    legacy = _legacy_checkpoint(tiny_config, tmp_path / "legacy.pth")
    with pytest.raises(Exception):
        torch.load(legacy, weights_only=True)  # the reason it is refused
    with pytest.raises(CheckpointError, match="trust_legacy_checkpoint"):
        run_recbole(config_dict=dict(tiny_config, checkpoint_path=legacy, test_only=True))
    result = run_recbole(
        config_dict=dict(tiny_config, checkpoint_path=legacy, test_only=True, trust_legacy_checkpoint=True)
    )
    assert set(result["test_result"]) == {"hit@10", "ndcg@10", "mrr@10"}


def test_unreadable_and_missing_checkpoint_errors(tiny_config, tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken\.pth.*unreadable"):
        run_recbole(config_dict=dict(tiny_config, checkpoint_path=str(bad)))
    with pytest.raises(CheckpointError, match=r"nowhere\.pth.*does not exist"):
        run_recbole(config_dict=dict(tiny_config, checkpoint_path=str(tmp_path / "nowhere.pth")))


def test_checkpoint_of_another_model_or_incompatible_config(tiny_config):
    trained = run_recbole(config_dict=dict(tiny_config, epochs=1))
    path = trained["saved_model_file"]
    with pytest.raises(CheckpointError, match=r"holds a 'SASRec' model.*'GRU4Rec'"):
        run_recbole(config_dict=dict(tiny_config, model="GRU4Rec", checkpoint_path=path, test_only=True))
    with pytest.raises(CheckpointError, match=r"(?s)does not fit.*hidden_size: checkpoint 16, this run 32"):
        run_recbole(config_dict=dict(tiny_config, hidden_size=32, checkpoint_path=path, test_only=True))


def test_runs_started_in_the_same_second_get_distinct_files(tiny_config, monkeypatch):
    import recbole_timeplug.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "get_local_time", lambda: "Jan-01-2026_00-00-00")
    a = run_recbole(config_dict=dict(tiny_config, epochs=1))
    b = run_recbole(config_dict=dict(tiny_config, epochs=1))
    assert a["saved_model_file"] != b["saved_model_file"] and a["last_model_file"] != b["last_model_file"]
    assert os.path.getsize(a["saved_model_file"]) > 0 and os.path.getsize(b["saved_model_file"]) > 0
