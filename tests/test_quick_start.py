"""End-to-end runs through this package's entry points, as users run them."""

import re

import pytest
import torch

from conftest import TINY_MODEL, cli_args, printed
from recbole_timeplug.errors import TimeplugError
from recbole_timeplug.quick_start import load_data_and_model, run, run_recbole


def _ml100k(tmp_path, **extra):
    return {
        "model": "SASRec",
        "dataset": "ml-100k",
        "epochs": 1,
        "train_batch_size": 1024,
        "state": "ERROR",
        "show_progress": False,
        "checkpoint_dir": str(tmp_path / "saved"),
        **TINY_MODEL,
        **extra,
    }


def test_sasrec_matches_recbole_own_pipeline(tmp_path):
    """Same config, same data: our run_recbole and RecBole's give the same metrics."""
    from recbole.quick_start import run_recbole as recbole_run_recbole

    config = _ml100k(tmp_path, train_neg_sample_args=None)  # RecBole itself needs this for CE
    ours = run_recbole(config_dict=dict(config))
    theirs = recbole_run_recbole(config_dict=dict(config))
    assert ours["test_result"] == {k: float(v) for k, v in theirs["test_result"].items()}
    assert ours["best_valid_result"] == {k: float(v) for k, v in theirs["best_valid_result"].items()}
    assert torch.is_anomaly_enabled() is False


def test_cli_train_then_test_only(tiny_config, run_cli):
    config = dict(tiny_config, state="INFO")
    train = run_cli("run_recbole.py", *cli_args(config))
    out = train.stdout + train.stderr
    test_line = printed(out, "test result")
    best = re.search(r"best checkpoint\s*: (\S+)", out).group(1)
    last = re.search(r"last checkpoint\s*: (\S+)", out).group(1)
    assert last.endswith("-last.pth")

    # evaluate saved weights: the same metric table as at training time, no training
    evaluate = run_cli("run_recbole.py", f"--checkpoint_path={best}", "--test_only=True", "--state=INFO")
    out2 = evaluate.stdout + evaluate.stderr
    assert printed(out2, "test result") == test_line
    assert "training [time" not in out2


def test_load_data_and_model_restores_the_trained_model(tiny_config):
    trained = run_recbole(config_dict=dict(tiny_config, epochs=1))
    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(trained["saved_model_file"])
    assert config["model"] == "SASRec" and config["hidden_size"] == 16
    from recbole_timeplug import get_trainer

    result = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(test_data, load_best_model=False)
    assert {k: float(v) for k, v in result.items()} == trained["test_result"]


def test_multi_process_run_without_gpus_is_a_clear_error(tiny_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(TimeplugError, match=r"nproc=2.*needs CUDA GPUs"):
        run("SASRec", "tiny", config_dict=tiny_config, nproc=2)


def test_test_only_without_checkpoint_path(tiny_config):
    with pytest.raises(TimeplugError, match="needs `checkpoint_path`"):
        run_recbole(config_dict=dict(tiny_config, test_only=True))
