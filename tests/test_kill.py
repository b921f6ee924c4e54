"""A training run killed with SIGKILL mid-epoch or mid checkpoint write: the -last checkpoint still loads
(weights_only=True), nothing on disk is truncated, and resuming from it reaches the uninterrupted run's numbers."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from recbole_timeplug.quick_start import run_recbole

# Run in a fresh process: train, and block (to be killed) at the moment the test asks for.
CHILD = r'''
import json, sys, time
import torch
import recbole_timeplug
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole_timeplug.quick_start import run_recbole

mode, config = sys.argv[1], json.load(open(sys.argv[2]))
state = {"epoch": -1, "batch": 0}
train_epoch, calculate_loss, save = RecBoleTrainer._train_epoch, SASRec.calculate_loss, torch.save

def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
    state["epoch"], state["batch"] = epoch_idx, 0
    return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

def _calculate_loss(self, interaction):
    state["batch"] += 1
    if mode == "epoch" and state["epoch"] == 2 and state["batch"] == 3:
        print("BLOCKED mid-epoch", flush=True); time.sleep(600)
    return calculate_loss(self, interaction)

def _save(obj, f, *args, **kwargs):
    if mode == "save" and "-last" in str(f) and obj.get("epoch") == 1:
        # half of the bytes reach the temp file, then the process dies
        save(obj, f, *args, **kwargs)
        size = __import__("os").path.getsize(f)
        __import__("os").truncate(f, size // 2)
        print("BLOCKED mid-write", flush=True); time.sleep(600)
    return save(obj, f, *args, **kwargs)

RecBoleTrainer._train_epoch, SASRec.calculate_loss, torch.save = _train_epoch, _calculate_loss, _save
run_recbole(config_dict=config)
print("FINISHED", flush=True)
'''


def _kill_when_blocked(tmp_path, mode, config):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), mode, str(tmp_path / "config.json")],
                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    deadline = time.time() + 300
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("BLOCKED") or time.time() > deadline:
                break
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    assert seen and seen[-1].startswith("BLOCKED"), "".join(seen)[-3000:]


@pytest.mark.parametrize("mode, last_epoch", [("epoch", 1), ("save", 0)])
def test_sigkill_leaves_a_loadable_last_checkpoint_and_resume_is_exact(tiny_config, tmp_path, mode, last_epoch):
    config = dict(tiny_config, epochs=4, train_batch_size=64, eval_step=1, stopping_step=100)
    _kill_when_blocked(tmp_path, mode, config)

    saved = tiny_config["checkpoint_dir"]
    last = glob.glob(os.path.join(saved, "*-last.pth"))
    assert len(last) == 1, os.listdir(saved)
    payload = torch.load(last[0], map_location="cpu", weights_only=True)  # complete, safe to load
    assert payload["epoch"] == last_epoch
    for path in glob.glob(os.path.join(saved, "*.pth")):  # every .pth is whole (the torn bytes are in a temp)
        if os.path.getsize(path):
            torch.load(path, map_location="cpu", weights_only=True)
    if mode == "save":
        assert glob.glob(os.path.join(saved, "*-last.pth.tmp-*")), os.listdir(saved)

    resumed = run_recbole(config_dict=dict(config, checkpoint_path=last[0]))
    whole = run_recbole(config_dict=dict(config, checkpoint_dir=str(tmp_path / "whole")))
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["best_valid_result"] == whole["best_valid_result"]
