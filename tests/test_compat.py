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


def _sequential_dataset(tmp_path, rows, model="TiSASRec", **extra):
    """A RecBole dataset built through this package's Config from ``rows`` of (user, item, time text)."""
    from recbole.data import create_dataset

    from recbole_timeplug.config import Config

    folder = tmp_path / "data" / "ts"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t}" for u, i, t in rows]
    (folder / "ts.inter").write_text("\n".join(lines) + "\n")
    config = Config(model=model, dataset="ts", config_dict={"data_path": str(tmp_path / "data"), "state": "ERROR",
                                                            "MAX_ITEM_LIST_LENGTH": 20, **extra})
    return create_dataset(config)


@pytest.mark.parametrize("unit", [1, 1000])  # Unix seconds (1e9) and milliseconds (1e12)
def test_time_field_reaches_the_model_in_float64(tmp_path, unit):
    """float32 is 64-128 s apart at 1e9: the gaps a model sees must equal the file's, to the unit."""
    from recbole.data import data_preparation

    rng = np.random.default_rng(1)
    rows, truth = [], {}
    for u in range(1, 9):
        t = 1_000_000_000 * unit + int(rng.integers(0, 10**6)) * unit
        for _ in range(8):
            t += int(rng.integers(1, 200)) * unit  # gaps of 1-200 s: below float32's spacing
            rows.append((u, int(rng.integers(1, 20)), str(t)))
            truth.setdefault(str(u), []).append(t)
    dataset = _sequential_dataset(tmp_path, rows)
    train, _, _ = data_preparation(dataset.config, dataset)
    inter = train._dataset.inter_feat
    assert inter["timestamp_list"].dtype == torch.float64 and inter["timestamp"].dtype == torch.float64
    for r in range(len(inter)):
        n = int(inter["item_length"][r])
        expected = np.diff(np.array(truth[dataset.id2token("user_id", int(inter["user_id"][r]))][:n], dtype=np.int64))
        seen = np.diff(inter["timestamp_list"][r, :n].numpy())
        np.testing.assert_array_equal(seen, expected.astype(np.float64))
    # the unpatched float32 conversion would not have kept them (the breakage this fixes)
    lost = np.diff(np.array(truth["1"], dtype=np.float32).astype(np.float64)) != np.diff(np.array(truth["1"]))
    assert lost.any()


def test_fill_nan_warns_not_and_fills(tmp_path):
    import warnings

    rows = [(1, 1, "10"), (1, 2, "20"), (1, 3, "30"), (2, 1, "40"), (2, 2, ""), (2, 3, "60")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # RecBole's chained fillna raised one per field
        dataset = _sequential_dataset(tmp_path, rows, model="SASRec", missing_timestamp="fill",
                                      load_col={"inter": ["user_id", "item_id", "timestamp"]})
    times = np.asarray(dataset.inter_feat["timestamp"])
    assert not np.isnan(times).any()
    assert sorted(times.tolist()) == sorted([10.0, 20.0, 30.0, 40.0, 60.0, 32.0])  # RecBole's mean fill


def test_grad_scaler_without_deprecation_warning(tiny_config):
    import warnings

    from recbole_timeplug.config import Config
    from recbole_timeplug.registry import get_model, get_trainer

    config = Config(config_dict=dict(tiny_config))
    from recbole.data import create_dataset, data_preparation

    dataset = create_dataset(config)
    train, valid, _ = data_preparation(config, dataset)
    model = get_model("SASRec")(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # torch.cuda.amp.GradScaler(...) is deprecated
        trainer._train_epoch(train, 0)


def test_pop_counts_every_occurrence_of_an_item_in_a_batch(tiny_config):
    import numpy as np
    import torch
    from recbole.data import create_dataset, data_preparation

    from recbole_timeplug.config import Config
    from recbole_timeplug.registry import get_model

    settings = {k: v for k, v in tiny_config.items() if k != "model"}
    settings["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}  # adds label-0 rows
    config = Config(model="Pop", config_dict=settings)
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    model = get_model("Pop")(config, train._dataset)
    items = []
    for batch in train:
        assert (batch["label"] == 0).any()
        items.append(batch["item_id"][batch["label"] > 0])
        model.calculate_loss(batch)
    items = torch.cat(items)
    assert len(torch.unique(items)) < len(items) / 10  # batches repeat items (the case RecBole miscounts)
    expected = np.bincount(items.numpy(), minlength=model.n_items)
    assert model.item_cnt.squeeze(1).tolist() == expected.tolist()
    assert int(model.max_cnt) == expected.max()
