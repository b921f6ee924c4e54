"""Hyperparameter search: hyperopt (exhaustive / random / bayes), params-file errors, Ray Tune on CPU."""

import math
import os
import re

import numpy as np
import pytest

from recbole_timeplug.hyper import (
    ParamsFileError,
    ParamsFileNotFoundError,
    build_ray_space,
    hyperopt_search,
    parse_params_file,
    ray_search,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_tiny(path, n_users=60, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, n_users + 1):
        t = 1_000_000.0 + float(rng.integers(0, 1000))
        for i in rng.integers(1, n_items + 1, size=int(rng.integers(15, 26))):
            t += float(rng.integers(1, 500))
            rows.append(f"{u}\t{i}\t{t:.1f}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """RecBole's Config reads --key=value from sys.argv, and writes log/ folders into the cwd."""
    monkeypatch.setattr("sys.argv", ["pytest"])
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fixed(tmp_path):
    _write_tiny(str(tmp_path / "tiny" / "tiny.inter"))
    return {
        "model": "SASRec",
        "dataset": "tiny",
        "data_path": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "saved"),
        "epochs": 1,
        "hidden_size": 8,
        "inner_size": 16,
        "n_layers": 1,
        "n_heads": 1,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "state": "ERROR",
        "show_progress": False,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "valid_metric": "NDCG@10",
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10],
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},  # RecBole's default drops timestamp
    }


def _params(tmp_path, text, name="p.hyper"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _table_rows(report):
    return [line for line in report.splitlines() if re.match(r"^\| \d+( \(best\))? \|", line)]


def _check_result(result, output_file, n_trials, names):
    assert len(result["trials"]) == n_trials
    for trial in result["trials"]:
        assert set(trial["params"]) == set(names)
        assert trial["best_valid_score"] is not None
        assert "ndcg@10" in trial["best_valid_result"] and "hit@10" in trial["test_result"]
    assert set(result["best_params"]) == set(names)
    assert result["best_valid_score"] == max(t["best_valid_score"] for t in result["trials"])
    report = open(output_file, encoding="utf-8").read()
    assert len(_table_rows(report)) == n_trials
    assert "## Best params" in report and "test ndcg@10" in report and "valid ndcg@10" in report
    for name, value in result["best_params"].items():
        assert f"- {name}: " in report
    return report


def test_exhaustive_runs_every_combination(fixed, tmp_path):
    params = _params(tmp_path, "learning_rate choice [0.001,0.005]\nhidden_dropout_prob choice [0.2]\n")
    out = str(tmp_path / "res" / "ex.md")
    result = hyperopt_search(params, config_dict=fixed, algo="exhaustive", output_file=out)
    report = _check_result(result, out, 2, ["learning_rate", "hidden_dropout_prob"])
    assert sorted(t["params"]["learning_rate"] for t in result["trials"]) == [0.001, 0.005]
    assert "valid metric: ndcg@10 (bigger is better)" in report
    assert os.path.isdir(tmp_path / "saved")  # the fixed checkpoint_dir reached the trials


@pytest.mark.parametrize("algo", ["random", "bayes"])
def test_random_and_bayes(fixed, tmp_path, algo):
    params = _params(
        tmp_path,
        "learning_rate loguniform -7,-5\ninner_size quniform 8,16,8\nhidden_dropout_prob uniform 0.1,0.3\n",
    )
    out = str(tmp_path / f"{algo}.md")
    result = hyperopt_search(params, config_dict=fixed, algo=algo, max_evals=2, output_file=out)
    _check_result(result, out, 2, ["learning_rate", "inner_size", "hidden_dropout_prob"])
    for trial in result["trials"]:
        assert math.exp(-7) <= trial["params"]["learning_rate"] <= math.exp(-5)
        assert type(trial["params"]["inner_size"]) is int and trial["params"]["inner_size"] in (8, 16)


def test_fixed_config_files_reach_trials(fixed, tmp_path):
    yaml_file = tmp_path / "fixed.yaml"
    yaml_file.write_text("valid_metric: MRR@10\n")
    params = _params(tmp_path, "learning_rate choice [0.001]\n")
    out = str(tmp_path / "files.md")
    fixed = {k: v for k, v in fixed.items() if k != "valid_metric"}
    result = hyperopt_search(params, config_file_list=[str(yaml_file)], config_dict=fixed, output_file=out)
    assert result["valid_metric"] == "mrr@10"
    assert result["best_valid_score"] == result["best_valid_result"]["mrr@10"]


@pytest.mark.parametrize(
    "text, line, needle",
    [
        ("learning_rate choice [0.001]\ndropout normal 0,1\n", 2, "unknown type 'normal'"),
        ("learning_rate choice [0.001,\n", 1, "cannot parse the choice values"),
        ("learning_rate uniform 0.1\n", 1, "low,high"),
        ("\nlearning_rate choice\n", 2, "expected `name type values`"),
        ("# learning rates\n", 1, "unknown type 'learning'"),
    ],
)
def test_bad_params_file_names_file_and_line(tmp_path, text, line, needle):
    params = _params(tmp_path, text, name="bad.hyper")
    with pytest.raises(ParamsFileError) as info:
        hyperopt_search(params, config_dict={"model": "SASRec"})
    message = str(info.value)
    assert params in message and f"line {line}" in message and needle in message


def test_missing_params_file_and_exhaustive_on_continuous(tmp_path):
    with pytest.raises(ParamsFileNotFoundError, match="nope.hyper"):
        parse_params_file(str(tmp_path / "nope.hyper"))
    params = _params(tmp_path, "learning_rate uniform 0.001,0.01\n")
    with pytest.raises(ParamsFileError, match="Exhaustive search needs a finite grid"):
        hyperopt_search(params, config_dict={"model": "SASRec"}, algo="exhaustive")


def test_cmd_line_override_of_a_searched_param_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["run_hyper.py", "--learning_rate=0.1"])
    params = _params(tmp_path, "learning_rate choice [0.001,0.005]\n")
    with pytest.raises(ParamsFileError, match="also set on the command line"):
        hyperopt_search(params, config_dict={"model": "SASRec"})


def test_quniform_becomes_a_grid_for_exhaustive_search():
    from recbole_timeplug.hyper import _quniform_grid

    assert _quniform_grid(8, 32, 8) == [8, 16, 24, 32]
    assert _quniform_grid(0.1, 0.3, 0.1) == pytest.approx([0.1, 0.2, 0.3])


def test_example_params_file_parses():
    params = parse_params_file(os.path.join(REPO, "configs", "hyper", "sasrec.hyper"))
    assert params["learning_rate"] == ("choice", [0.001, 0.0005])


def test_ray_space_matches_hyperopt_semantics(tmp_path):
    pytest.importorskip("ray")
    space = build_ray_space(
        parse_params_file(_params(tmp_path, "lr loguniform -7,-5\nsize quniform 8,64,8\nd uniform 0.1,0.3\n"))
    )
    assert math.isclose(space["lr"].lower, math.exp(-7)) and math.isclose(space["lr"].upper, math.exp(-5))
    samples = [space["size"].sample() for _ in range(20)]
    assert all(isinstance(s, (int, np.integer)) and s % 8 == 0 and 8 <= s <= 64 for s in samples)


@pytest.mark.ray
def test_ray_search_on_cpu(fixed, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    params = _params(tmp_path, "learning_rate choice [0.001,0.005]\nhidden_dropout_prob uniform 0.1,0.3\n")
    out = str(tmp_path / "ray.md")
    fixed = dict(fixed, data_path="tiny_parent")  # relative: must be made absolute for the workers
    os.makedirs(tmp_path / "tiny_parent" / "tiny")
    os.replace(tmp_path / "tiny" / "tiny.inter", tmp_path / "tiny_parent" / "tiny" / "tiny.inter")
    try:
        result = ray_search(
            params,
            config_dict=fixed,
            num_samples=2,
            cpus_per_trial=1,
            local_dir=str(tmp_path / "ray_log"),
            output_file=out,
            num_cpus=2,
            verbose=0,
        )
    finally:
        ray.shutdown()
    assert result["metric"] == "valid_ndcg@10" and result["mode"] == "max"
    assert result["failed_trials"] == 0
    _check_result(result, out, 2, ["learning_rate", "hidden_dropout_prob"])
    trial_dirs = [d for d in os.listdir(tmp_path / "saved") if os.path.isdir(tmp_path / "saved" / d)]
    assert len(trial_dirs) == 2  # one checkpoint folder per trial: concurrent trials never share a file
    assert all(any(f.endswith(".pth") for f in os.listdir(tmp_path / "saved" / d)) for d in trial_dirs)


def test_run_hyper_cli(fixed, tmp_path):
    import subprocess
    import sys

    import yaml

    settings = {k: v for k, v in fixed.items() if k not in ("model", "dataset", "data_path", "valid_metric")}
    (tmp_path / "fixed.yaml").write_text(yaml.safe_dump(settings))
    params = _params(tmp_path, "learning_rate choice [0.001,0.005]\n")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_hyper.py"), "--model=SASRec", "--dataset=tiny",
         "--config_files=fixed.yaml", f"--params_file={params}", f"--data_path={tmp_path}",
         "--valid_metric=MRR@10"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "best params: {'learning_rate': " in proc.stdout
    report = open(tmp_path / "hyper_results" / "SASRec-tiny.md", encoding="utf-8").read()
    assert "valid metric: mrr@10" in report  # the --key=value override reached the trials
    assert len(_table_rows(report)) == 2
