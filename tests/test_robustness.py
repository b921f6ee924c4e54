"""Bad data and bad files end in one-line errors (exit 2) or in documented, correct behaviour (issue #16)."""

import os

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, cli_args, one_line_error, write_inter
from recbole_timeplug.errors import CheckpointError, DataError
from recbole_timeplug.quick_start import run_recbole

TINY_TIME = {"model": "TiSASRec", "n_layers": 1, "time_span": 32}


def _blank_times(path, rows):
    """Blank the timestamp of the given data rows (1-based, after the header) of an .inter file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for r in rows:
        u, i, _ = lines[r].split("\t")
        lines[r] = f"{u}\t{i}\t" if r % 2 else f"{u}\t{i}\tnan"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _config(tiny_config, **extra):
    return dict(tiny_config, epochs=1, **TINY_TIME, **extra)


# ----------------------------------------------------------------------------- missing timestamps
def test_missing_timestamps_refused_for_time_aware_models(tiny_config, run_cli):
    path = os.path.join(tiny_config["data_path"], "tiny", "tiny.inter")
    _blank_times(path, [5, 6, 40])
    line = one_line_error(run_cli("run_recbole.py", *cli_args(_config(tiny_config)), check=False))
    assert "3 of " in line and "have no `timestamp`" in line and "missing_timestamp: drop" in line
    assert "lines [6, 7, 41]" in line  # file lines (header = line 1)


def test_missing_timestamps_dropped_on_request(tiny_config):
    from recbole.data import create_dataset

    from recbole_timeplug.config import Config

    path = os.path.join(tiny_config["data_path"], "tiny", "tiny.inter")
    total = sum(1 for _ in open(path)) - 1
    _blank_times(path, [5, 6, 40])
    dataset = create_dataset(Config(config_dict=_config(tiny_config, missing_timestamp="drop")))
    assert len(dataset.inter_feat) == total - 3
    assert not np.isnan(np.asarray(dataset.inter_feat["timestamp"], dtype=float)).any()
    assert ("missing_timestamp: drop", total, total - 3) in dataset.filter_log
    result = run_recbole(config_dict=_config(tiny_config, missing_timestamp="drop"))
    assert result["test_result"]["ndcg@10"] >= 0.0


def test_missing_timestamps_filled_for_models_that_only_order_by_time(tiny_config):
    from recbole.data import create_dataset

    from recbole_timeplug.config import Config

    path = os.path.join(tiny_config["data_path"], "tiny", "tiny.inter")
    _blank_times(path, [5])
    config = Config(config_dict=dict(tiny_config))  # SASRec: RecBole's mean fill, with a warning
    dataset = create_dataset(config)
    assert not np.isnan(np.asarray(dataset.inter_feat["timestamp"], dtype=float)).any()
    with pytest.raises(DataError, match="missing_timestamp"):
        create_dataset(Config(config_dict=dict(tiny_config, missing_timestamp="refuse")))
    with pytest.raises(DataError, match="choose one of refuse, drop, fill"):
        run_recbole(config_dict=dict(tiny_config, missing_timestamp="bogus"))


def test_dates_in_the_time_column(tmp_path, run_cli, tiny_config):
    path = os.path.join(tiny_config["data_path"], "tiny", "tiny.inter")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t2020-01-01"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    line = one_line_error(run_cli("run_recbole.py", *cli_args(_config(tiny_config)), check=False))
    assert "holds text" in line and "--time-format" in line


def test_millisecond_timestamps_give_the_same_intervals(tmp_path):
    """TiSASRec's personal unit r_u is relative, so ms and s data give identical intervals (exact in float64)."""
    from recbole.data import create_dataset, data_preparation

    from recbole_timeplug.config import Config
    from recbole_timeplug.model.sequential_recommender.tisasrec import TiSASRec

    seen = []
    for unit, name in ((1, "sec"), (1000, "msec")):
        path = write_inter(str(tmp_path / "data" / name / f"{name}.inter"), n_users=30)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        out = [lines[0]] + [f"{u}\t{i}\t{int(float(t)) * unit}" for u, i, t in (x.split("\t") for x in lines[1:])]
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(out) + "\n")
        config = Config(model="TiSASRec", dataset=name, config_dict={
            "data_path": str(tmp_path / "data"), "state": "ERROR", **TINY_MODEL, "n_layers": 1})
        dataset = create_dataset(config)
        train, _, _ = data_preparation(config, dataset)
        model = TiSASRec(config, train._dataset)
        inter = train._dataset.inter_feat[:200]
        seen.append(model.intervals(inter["timestamp_list"], inter["item_length"]))
        if unit == 1000:  # and against a float64 hand computation on the raw ms values
            t = np.array([[float(x) for x in row] for row in inter["timestamp_list"].tolist()])
            n = inter["item_length"].numpy()
            for r in range(0, 200, 37):
                ts = t[r, : n[r]]
                gaps = np.abs(np.diff(ts))
                r_u = gaps[gaps > 0].min() if (gaps > 0).any() else 1.0
                expected = np.minimum(np.floor(np.abs(ts[:, None] - ts[None, :]) / r_u), model.time_span)
                np.testing.assert_array_equal(seen[-1][r, : n[r], : n[r]].numpy(), expected)
    assert seen[0].max() > 1 and torch.equal(seen[0], seen[1])


# ---------------------------------------------------------------------------------- empty data
def test_k_core_that_removes_everything_names_the_filter(tiny_config, run_cli):
    config = _config(tiny_config, user_inter_num_interval="[1000,inf)")
    line = one_line_error(run_cli("run_recbole.py", *cli_args(config), check=False))
    assert "filtering users and items by interaction count" in line and "user_inter_num_interval" in line
    assert "[1000,inf)" in line


def test_histories_of_length_one_say_there_are_no_training_samples(tmp_path, run_cli):
    folder = tmp_path / "data" / "ones"
    folder.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{u % 7 + 1}\t{1e9 + u}" for u in range(1, 60)]
    (folder / "ones.inter").write_text("\n".join(rows) + "\n")
    config = {"model": "TiSASRec", "dataset": "ones", "data_path": str(tmp_path / "data"), "epochs": 1,
              "checkpoint_dir": str(tmp_path / "saved"), **TINY_MODEL, "n_layers": 1}
    line = one_line_error(run_cli("run_recbole.py", *cli_args(config), check=False))
    assert "No training samples" in line and "longest history after filtering has 1 interaction" in line


# --------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("payload", [5, {"config": 3, "state_dict": 4}, {"weights": torch.zeros(2)}])
def test_trusted_legacy_checkpoint_of_another_format(tiny_config, tmp_path, run_cli, payload):
    from recbole_timeplug.checkpoint import load_checkpoint

    path = str(tmp_path / "odd.pth")
    torch.save(payload, path, pickle_protocol=4)  # pickled as RecBole does: not loadable weights_only
    with pytest.raises(CheckpointError, match="expected a dict with `config`"):
        load_checkpoint(path, trust_legacy=True)
    proc = run_cli("run_recbole.py", f"--checkpoint_path={path}", "--trust_legacy_checkpoint=True",
                   "--test_only=True", check=False)
    assert "expected a dict with `config`" in one_line_error(proc)


def test_time_aware_models_see_raw_time_under_normalize_all(tmp_path):
    """RecBole's ml-100k.yaml has normalize_all: True; time-aware models must still see Unix seconds."""
    from recbole.data import create_dataset

    from recbole_timeplug.config import Config

    raw = np.loadtxt(os.path.join(os.path.dirname(__import__("recbole").__file__), "dataset_example", "ml-100k",
                                  "ml-100k.inter"), skiprows=1, usecols=3, max_rows=100_000)
    for model, normalized in (("TiSASRec", False), ("SASRec", True)):
        config = Config(model=model, dataset="ml-100k", config_dict={"state": "ERROR", **TINY_MODEL})
        assert config["normalize_all"] is True
        t = np.asarray(create_dataset(config).inter_feat["timestamp"], dtype=np.float64)
        if normalized:  # RecBole's behaviour for models that only order by time
            assert t.min() == 0.0 and t.max() == 1.0
        else:
            assert t.min() == raw.min() and t.max() == raw.max()
