"""One test per breakage fixed by ``recbole_timeplug._compat`` (docs/recbole_compat.md)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from recbole_timeplug import _compat


def test_numpy_aliases_restored_when_missing(monkeypatch):
    for alias in ("float_", "bool8", "float", "unicode_"):
        if alias in np.__dict__:
            monkeypatch.delattr(np, alias)
    _compat.restore_numpy_aliases()
    assert np.float_ is np.float64 and np.bool8 is np.bool_ and np.float is np.float64 and np.unicode_ is np.str_
    # RecBole's metrics use np.float at run time
    from recbole.evaluator.metrics import NDCG  # noqa: F401


def test_hyperopt_exhaustive_search_needs_and_gets_the_fix():
    from hyperopt import hp
    from recbole.trainer import hyper_tuning
    from recbole.trainer.hyper_tuning import HyperTuning

    space = {"a": hp.choice("a", [1, 2]), "b": hp.choice("b", [3])}
    original = hyper_tuning.exhaustive_search.__wrapped__
    if not hasattr(np.random.RandomState, "integers"):  # hyperopt >= 0.2.7 calls rng.integers
        import hyperopt

        with pytest.raises(AttributeError, match="integers"):  # the breakage, unpatched
            hyperopt.fmin(lambda p: 0.0, space, algo=original, max_evals=1, show_progressbar=False)
    seen = []

    def objective(config_dict, config_file_list):
        seen.append(dict(config_dict))
        return {"model": "x", "best_valid_score": float(config_dict["a"]), "valid_score_bigger": True,
                "best_valid_result": {}, "test_result": {}}

    tuner = HyperTuning(objective, space=space, algo="exhaustive")
    tuner.run()
    assert sorted(s["a"] for s in seen) == [1, 2]
    assert tuner.best_params["a"] == 2


def _anomaly_after(code):
    out = subprocess.run([sys.executable, "-c", code + "; import torch; print(torch.is_anomaly_enabled())"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_recbole_anomaly_mode_switched_off():
    # RecBole alone switches anomaly mode on for the whole process (sine.py) ...
    assert _anomaly_after("import recbole.model.sequential_recommender") == "True"
    # ... importing this package switches it off again, whatever was imported before
    assert _anomaly_after("import recbole.model.sequential_recommender, recbole_timeplug") == "False"
    assert torch.is_anomaly_enabled() is False


def test_torch_load_defaults_for_recbole_callers_only(tmp_path):
    class Opaque:  # a pickled object, like RecBole's Config inside its checkpoints
        pass

    path = tmp_path / "legacy.pth"
    torch.save({"obj": Opaque.__name__, "cfg": np.dtype("float32")}, path, pickle_protocol=4)
    with pytest.raises(Exception):  # our own code and user code keep the safe default
        torch.load(path)
    # RecBole's modules (e.g. S3Rec's pre_model_path load) get weights_only=False
    namespace = {"__name__": "recbole.model.sequential_recommender.s3rec", "torch": torch, "p": path}
    exec(compile("loaded = torch.load(p)", "s3rec.py", "exec"), namespace)
    assert namespace["loaded"]["obj"] == "Opaque"
