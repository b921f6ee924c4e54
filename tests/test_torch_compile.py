"""``torch_compile: True``: the training step runs compiled, checkpoints and resume are unchanged, and a failure
to compile falls back to eager with one warning.

One model (SASRec at hidden 8) on ml-100k, one epoch: compiling costs ~1 min per new shape on a cold inductor
cache (the full and the last, smaller batch), a few seconds once the cache in /tmp holds it.
"""

import logging

import pytest
import torch

from recbole_timeplug.errors import ModelConfigError
from recbole_timeplug.quick_start import run_recbole
from recbole_timeplug.trainer import CompiledLoss

# n_heads 2: with n_heads 1, torch 2.13's inductor fails on RecBole's attention (a pattern-matcher pass builds a
# wrong reshape: "shape '[B, 20, 8]' is invalid"), i.e. the fallback, not the compiled path, would be tested
TINY = {"hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 20}


def _config(directory, **extra):
    return {
        "model": "SASRec",
        "dataset": "ml-100k",
        "epochs": 1,
        "train_batch_size": 2048,
        "eval_batch_size": 4096,
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "state": "WARNING",
        "show_progress": False,
        "checkpoint_dir": str(directory),
        **TINY,
        **extra,
    }


def _run(directory, **extra):
    """``run_recbole``'s result, plus what the trainer looked like after each training epoch."""
    seen = []

    def listener(trainer, kind, seconds):
        if kind == "train":
            seen.append(
                {
                    "compiled": trainer.compiled_loss is not None and trainer.compiled_loss.active,
                    "instance_attr": "calculate_loss" in trainer.model.__dict__,
                }
            )

    result = run_recbole(config_dict=_config(directory, **extra), epoch_listeners=[listener])
    result["seen"] = seen
    return result


def _keys(path):
    return list(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("eager"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("compiled"), torch_compile=True)


def test_compiled_run_trains_evaluates_and_saves_the_same_keys(eager, compiled):
    assert compiled["seen"] == [{"compiled": True, "instance_attr": False}]  # compiled, and the module left alone
    assert eager["seen"] == [{"compiled": False, "instance_attr": False}]
    assert compiled["test_result"]["ndcg@10"] > 0
    for kind in ("saved_model_file", "last_model_file"):
        keys = _keys(compiled[kind])
        assert keys == _keys(eager[kind])
        assert not any("_orig_mod" in k for k in keys)


def test_compiled_run_resumes(compiled, tmp_path):
    resumed = _run(tmp_path, torch_compile=True, checkpoint_path=compiled["last_model_file"], epochs=2)
    assert resumed["seen"] == [{"compiled": True, "instance_attr": False}]  # only epoch 2 was trained
    assert _keys(resumed["last_model_file"]) == _keys(compiled["last_model_file"])
    assert torch.load(resumed["last_model_file"], weights_only=True)["epoch"] == 1


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "torch_compile" in r.getMessage()]


def test_torch_compile_that_raises_falls_back_to_eager(eager, tmp_path, monkeypatch, caplog):
    def no_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", no_compile)
    caplog.set_level(logging.WARNING)
    result = _run(tmp_path, torch_compile=True)
    (warning,) = _warnings(caplog)
    assert "SASRec.calculate_loss failed (RuntimeError: no compiler here)" in warning
    assert result["seen"] == [{"compiled": False, "instance_attr": False}]
    assert result["test_result"] == eager["test_result"]  # eager from the start: the eager run's numbers


def test_compiled_function_that_fails_on_first_call_falls_back_once(eager, tmp_path, monkeypatch, caplog):
    """Compiling is lazy (the first call); an error there, e.g. no C++ compiler, switches to eager for good."""
    calls = []

    def failing_compile(fn, *args, **kwargs):
        def compiled(*a, **k):
            calls.append(1)
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    caplog.set_level(logging.WARNING)
    result = _run(tmp_path, torch_compile=True)
    (warning,) = _warnings(caplog)
    assert "failed (RuntimeError: InvalidCxxCompiler: No working C++ compiler found); training eager" in warning
    assert calls == [1]  # tried once, then eager for every batch
    assert result["test_result"] == eager["test_result"]  # the failed call consumed no randomness


def test_compiled_loss_wraps_the_bound_method_only():
    calls = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def calculate_loss(self, x):
            calls.append(1)
            return self.linear(x).sum()

    model = Model()
    loss = CompiledLoss(model, logging.getLogger())
    x = torch.ones(3, 2)
    assert torch.allclose(loss(x), model.linear(x).sum())
    assert loss.active and list(model.state_dict()) == ["linear.weight", "linear.bias"]


@pytest.mark.parametrize("value", ["yes", 1, 0.5])
def test_torch_compile_must_be_boolean(tmp_path, value):
    with pytest.raises(ModelConfigError, match=r"SASRec: `torch_compile`=.* is invalid; it must be True or False"):
        run_recbole(config_dict=_config(tmp_path, torch_compile=value))
