"""Shared fixtures: a generated dataset (no downloads), tiny configs, and a CLI runner."""

import ast
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import recbole_timeplug  # noqa: F401  (applies the compat fixes before RecBole is used)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = {  # a SASRec small enough for a 2-core CPU
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 1,
    "MAX_ITEM_LIST_LENGTH": 20,
}


def write_inter(path, n_users=150, n_items=80, min_len=12, max_len=30, seed=0, with_time=True):
    """RecBole atomic ``.inter`` with increasing float timestamps, a few duplicates and zero gaps."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = ["user_id:token", "item_id:token"] + (["timestamp:float"] if with_time else [])
    rows = ["\t".join(header)]
    for u in range(1, n_users + 1):
        length = int(rng.integers(min_len, max_len + 1))
        # popularity skew so models have something to learn
        items = rng.choice(np.arange(1, n_items + 1), size=length, p=_zipf(n_items))
        t = 1_000_000_000.0 + float(rng.integers(0, 10_000_000))
        for k, i in enumerate(items):
            gap = 0.0 if k % 7 == 3 else float(rng.integers(1, 100_000))  # duplicate timestamps too
            t += gap
            rows.append("\t".join([str(u), str(i)] + ([f"{t:.1f}"] if with_time else [])))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    return path


def _zipf(n):
    w = 1.0 / np.arange(1, n + 1) ** 0.8
    return w / w.sum()


@pytest.fixture
def tiny_data(tmp_path):
    """``(data_path, dataset)`` of a generated dataset in ``tmp_path``."""
    write_inter(str(tmp_path / "data" / "tiny" / "tiny.inter"))
    return str(tmp_path / "data"), "tiny"


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    """Config dict: tiny SASRec on the generated dataset, files written under ``tmp_path``."""
    data_path, dataset = tiny_data
    return {
        "model": "SASRec",
        "dataset": dataset,
        "data_path": data_path,
        "checkpoint_dir": str(tmp_path / "saved"),
        "log_wandb": False,
        "state": "ERROR",
        "show_progress": False,
        "epochs": 2,
        "train_batch_size": 256,
        "eval_batch_size": 1024,
        "learning_rate": 0.003,
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        **TINY_MODEL,
    }


@pytest.fixture
def run_cli(tmp_path):
    """Run a repo script as a user would (fresh process, cwd = tmp_path); returns CompletedProcess."""

    def _run(script, *args, check=True, timeout=600):
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, script), *args],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return proc

    return _run


ML100K_CLI = {  # run control shared by the CLI tests on RecBole's shipped ml-100k: one epoch, @10 metrics
    "dataset": "ml-100k",
    "epochs": 1,
    "metrics": ["Hit", "NDCG", "MRR"],
    "topk": [10],
    "valid_metric": "NDCG@10",
    "state": "INFO",
    "show_progress": False,
}


@pytest.fixture
def cli_config(tmp_path):
    """``cli_config(model, **settings)``: a config dict for ``run_recbole.py`` on ml-100k (``ML100K_CLI``
    plus the model's own sizes), checkpoints under ``tmp_path``; pass it through :func:`cli_args`."""

    def _make(model, **settings):
        return {"model": model, **ML100K_CLI, "checkpoint_dir": str(tmp_path / "saved"), **settings}

    return _make


def printed(output, label):
    """The last ``<label> : {...}`` dict a run printed (e.g. "test result"), as text: compare runs with it."""
    found = re.findall(re.escape(label) + r"\s*: (\{.*\})", output)
    assert found, f"no '{label}' line in output:\n{output[-3000:]}"
    return found[-1]


def printed_metrics(output, label="test result"):
    """The same line as a dict of metric -> float."""
    return ast.literal_eval(printed(output, label))


def cli_args(config):
    """``--key=value`` arguments for a config dict (lists/dicts in Python literal syntax, as RecBole parses)."""
    return [f"--{k}={v!r}" if isinstance(v, (list, dict)) else f"--{k}={v}" for k, v in config.items()]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch, tmp_path):
    """RecBole's Config reads ``--key=value`` from sys.argv: keep pytest's own flags out of it, and keep
    RecBole's ``log/`` and ``log_tensorboard/`` folders out of the repository."""
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)


def one_line_error(proc, script="run_recbole.py"):
    """A CLI run that failed as bad input should: exit 2, no traceback, the error as the last line (logs may precede)."""
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{script}: error: "), proc.stderr[-2000:]
    return last
