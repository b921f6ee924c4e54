"""Train a list of models on one dataset to early stopping and write a results table (+ bar chart).

    python benchmarks/results.py --dataset ml-100k --models SASRec,GRU4Rec,TiM4Rec \
        --config_files configs/ml-100k_results.yaml --seeds 2020,2021 --out results/

Every model runs in this process through ``recbole_timeplug.quick_start.run_recbole`` under the common
protocol (``baseline/common_protocol.yaml``). Config files, lowest priority first:

    baseline/common_protocol.yaml  <  baseline/<Model>.yaml (if it exists)  <  --config_files  <  --set

so a preset such as ``configs/ml-100k_results.yaml`` (shared settings for all models) wins over a
baseline's usual hyperparameters, and ``--set key=value`` (all models) / ``--set Model:key=value`` (one
model) wins over everything. Plugin models take their defaults from the package's YAMLs as usual.

Writes ``<out>/<dataset>.md`` (test Hit/NDCG/MRR @10 and @20, best valid score, parameters, epochs trained,
seconds per training epoch and per evaluation, and each model's exact settings with the command that
reproduces it), ``<out>/<dataset>.json`` (every run's raw record) and ``<out>/<dataset>.png`` (bar chart;
needs matplotlib: ``pip install -e ".[plot]"`` — without it the chart is skipped with a message).
Each record in the JSON keeps the run's learning curve (``curve``: training loss and validation score per epoch,
the epochs before a resume included, read from the checkpoints for ``--import``), drawn per model in
``<out>/<dataset>_curves.png``.
With several seeds the table shows mean ± std (sample std, ddof=1) over the seeds that finished.
``--append`` adds to an existing ``<out>/<dataset>.json`` (models run now replace their old rows), so a
table can be filled by several processes in parallel or grown one model at a time; the table then names
every command that contributed. ``--render`` rewrites the table and chart from that JSON without training
(``--models`` then sets the row order). A run stopped by the ``epochs`` cap rather than by early stopping
is marked † in the table. A multi-stage model (TiMiRec) also gets a row per earlier stage
(``TiMiRec · pretrain`` = ComiRec+), tested on the same split.
A model that fails is reported in the table with its error; the other models still run.

**Significance.** Every run's per-user test metrics (one value per test case, see
``recbole_timeplug.evaluation``; leave-one-out has one case per user) are saved in
``<out>/per_user/<dataset>/<model>-seed<seed>.json``. Each row is tested against ``--reference`` (default SASRec),
paired over users: Wilcoxon signed-rank on each user's metric (the mean of the user's test cases where a split tests
a user more than once) averaged over the model's seeds (pooled) and on each seed alone, Holm-corrected over the rows (per metric), with a
paired-bootstrap 95 % CI of the mean difference. The table marks ▲ / ▼ (significantly better / worse at α = 0.05
after correction); ``--pairs A:B,...`` adds the ablation pairs (a model against its idea switched off, e.g.
``TiM4Rec:SSD4Rec``), Holm-corrected over the pairs.

**Resuming.** With ``--append``, a (model, seed) run the table already has with the same settings is kept and not
run again (``--rerun`` forces it), so an interrupted table is resumed by repeating its command; other seeds of the
same settings accumulate, and a model run with other settings replaces its old runs.
With ``--checkpoint_dir`` a run that was stopped midway (its ``-last`` checkpoint is in the run's folder there, its
row is not in the table) continues exactly from its last finished epoch instead of starting again.
``--import LABEL=CHECKPOINT`` adds a model trained by another command (e.g. ``run_recbole.py``) from its best
checkpoint: its saved weights are tested (per-user metrics included; no training times).
"""

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE_DIR = os.path.join(REPO, "baseline")
COMMON_PROTOCOL = os.path.join(BASELINE_DIR, "common_protocol.yaml")

METRICS = ["hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20", "mrr@20"]  # the default columns (--metrics)


def metric_label(metric):
    """``ndcg@10`` -> ``NDCG@10``."""
    name, _, k = metric.partition("@")
    return {"hit": "Hit", "ndcg": "NDCG", "mrr": "MRR", "recall": "Recall", "precision": "Precision"}.get(name, name) \
        + "@" + k


METRIC_LABELS = {m: metric_label(m) for m in METRICS}

# Settings shown for every model besides its own hyperparameters (keys of its YAMLs).
RUN_KEYS = [
    "seed", "MAX_ITEM_LIST_LENGTH", "loss_type", "train_neg_sample_args", "learning_rate", "weight_decay",
    "train_batch_size", "eval_batch_size", "epochs", "stopping_step", "eval_step", "valid_metric",
    "eval_args", "user_inter_num_interval", "item_inter_num_interval", "val_interval", "load_col", "device",
]
PROTOCOL_KEYS = ["eval_args", "user_inter_num_interval", "item_inter_num_interval", "val_interval",
                 "metrics", "topk", "valid_metric", "MAX_ITEM_LIST_LENGTH"]


# ------------------------------------------------------------------------------------ arguments
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name (atomic files in data_path/<name>/)")
    p.add_argument("--models", default="", help="comma-separated model names (plugin or RecBole)")
    p.add_argument("--config_files", default="", help="space-separated YAML files (win over baseline/*.yaml)")
    p.add_argument("--seeds", default="2020", help="comma-separated seeds; >1 seed -> mean ± std")
    p.add_argument("--epochs", type=int, default=None, help="override `epochs` (max epochs; early stopping still applies)")
    p.add_argument("--out", default="results", help="output folder for <dataset>.md/.json/.png")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[Model:]KEY=VALUE",
                   help="config override (YAML value), for all models or one model; repeatable")
    p.add_argument("--baseline_dir", default=BASELINE_DIR, help="folder of common_protocol.yaml and <Model>.yaml")
    p.add_argument("--checkpoint_dir", default=None,
                   help="keep the checkpoints here (default: a temporary folder, deleted at the end)")
    p.add_argument("--no_plot", action="store_true", help="do not draw the bar chart")
    p.add_argument("--append", action="store_true",
                   help="add to <out>/<dataset>.json instead of replacing it: models run now replace their old "
                        "rows, the other rows are kept (run models in parallel processes, or add one later)")
    p.add_argument("--rerun", action="store_true",
                   help="with --append: train again the (model, seed) runs the table already has with the same "
                        "settings (by default they are kept and skipped, so an interrupted table resumes)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="LABEL=CHECKPOINT",
                   help="add a model trained elsewhere (e.g. by run_recbole.py) from its best checkpoint: its saved "
                        "weights are tested, per-user metrics included; repeatable; with --append it joins the table")
    p.add_argument("--metrics", default=",".join(METRICS),
                   help="the table's columns, comma-separated <metric>@<k> among what the runs compute (their "
                        "`metrics` x `topk`), e.g. hit@5,ndcg@5,hit@10,ndcg@10 for a sampled protocol")
    p.add_argument("--reference", default="SASRec",
                   help="the row every other row is tested against (paired over users; default SASRec)")
    p.add_argument("--pairs", default="",
                   help="ablation pairs 'A:B,C:D' (A vs B, paired over users), tabled under 'Does the idea help'")
    p.add_argument("--render", action="store_true",
                   help="train nothing: rewrite <dataset>.md/.png from <out>/<dataset>.json (e.g. after installing "
                        "matplotlib); --models, if given, puts those rows first in that order")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models and not args.render and not args.imports:
        p.error("--models is empty: give comma-separated model names, e.g. --models SASRec,GRU4Rec")
    imports = []
    for item in args.imports:
        label, sep, path = item.partition("=")
        if not sep or not label.strip() or not path.strip():
            p.error(f"--import {item!r}: expected LABEL=CHECKPOINT, e.g. SASRec=saved/SASRec-ml-100k-<time>.pth")
        if not os.path.isfile(path.strip()):
            p.error(f"--import {item!r}: checkpoint {path.strip()!r} does not exist")
        imports.append((label.strip(), path.strip()))
    args.imports = imports
    args.metrics = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    for metric in args.metrics:
        name, _, k = metric.partition("@")
        if not name or not k.isdigit():
            p.error(f"--metrics: {metric!r} is not <metric>@<k> (e.g. ndcg@10)")
    args.pairs = [tuple(x.strip() for x in pair.split(":")) for pair in args.pairs.split(",") if pair.strip()]
    for pair in args.pairs:
        if len(pair) != 2 or not all(pair):
            p.error(f"--pairs: expected A:B[,C:D...], got {':'.join(pair)!r}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.config_files = [f for f in args.config_files.split() if f]
    for f in args.config_files:
        if not os.path.isfile(f):
            p.error(f"--config_files: {f!r} does not exist")
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    args.global_set, args.model_set = _parse_overrides(p, args.overrides)
    for label in args.models:
        problem = variant_overridden(label, args.baseline_dir, args.config_files, args.global_set,
                                     args.model_set.get(label, {}))
        if problem:
            p.error(problem)
    return args


def variant_overridden(label, baseline_dir, user_files, global_set, label_set):
    """Why a variant row (a baseline YAML naming another model, e.g. ``TiSASRec-no-intervals``) would not be
    that variant, or None. The user's files and ``--set KEY=...`` win over the baseline YAML, so a preset that
    sets the key the variant is made of (``time_span`` in TiSASRec's protocol preset) silently turns the
    ablation back into the plain model; ``--set Label:KEY=...`` (the label's own setting) is the way to keep it."""
    from recbole_timeplug.testing import yaml_defaults  # YAML as RecBole reads it (1e-12 is a float)

    model, _ = resolve_model(label, baseline_dir)
    if model == label:
        return None
    path = os.path.join(baseline_dir, f"{label}.yaml")
    defining = {k: v for k, v in yaml_defaults(path).items() if k != "model"}
    sources = [(f, yaml_defaults(f)) for f in user_files] + [("--set", global_set)]
    for key, value in defining.items():
        if key in label_set:
            continue
        for where, values in sources:
            if key in values and values[key] != value:
                return (f"{where} sets {key}: {values[key]!r}, which overrides what makes {label} a variant of "
                        f"{model} ({_repo_relative(path)}: {key}: {value!r}): its rows would be plain {model}. "
                        f"Keep the variant with --set {label}:{key}={value}, or leave {key} out of {where}.")
    return None


def _parse_overrides(parser, items):
    import yaml

    global_set, model_set = {}, {}
    for item in items:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected KEY=VALUE or Model:KEY=VALUE")
        key, value = item.split("=", 1)
        value = yaml.safe_load(value) if value else None
        if ":" in key:
            model, key = key.split(":", 1)
            model_set.setdefault(model, {})[key] = value
        else:
            global_set[key] = value
    return global_set, model_set


def resolve_model(name, baseline_dir):
    """``(model class name, label)``: a baseline YAML may name another model (``SSD4Rec.yaml`` ->
    ``model: TiM4Rec``), so a configured variant gets its own row under its own label."""
    import yaml

    path = os.path.join(baseline_dir, f"{name}.yaml")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            target = (yaml.safe_load(f) or {}).get("model")
        if target and target != name:
            return str(target), name
    return name, name


def config_files_for(model, baseline_dir, user_files):
    """Lowest priority first: common protocol, the model's baseline YAML (if any), the user's files."""
    files = [os.path.join(baseline_dir, "common_protocol.yaml")]
    own = os.path.join(baseline_dir, f"{model}.yaml")
    if os.path.isfile(own):
        files.append(own)
    return files + list(user_files)


# ------------------------------------------------------------------------------------ one run
class RunProbe:
    """Times every training epoch and validation pass of a run, per training stage.

    Passed to ``run_recbole(epoch_listeners=[probe])``: every trainer of the run calls it after each
    epoch / validation pass. Multi-stage models (TiMiRec) train their earlier stages with trainers of their
    own, first; the trainer seen last is the run's final one.
    """

    def __init__(self):
        self.stages = []  # one dict per trainer seen, in order

    def __call__(self, trainer, kind, seconds):
        if not self.stages or self.stages[-1]["trainer"] is not trainer:
            params = int(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad))
            self.stages.append({"trainer": trainer, "params": params, "train": [], "valid": [], "last_epoch": None})
        self.stages[-1][kind].append(seconds)
        if kind == "train":  # the epoch's index, counted from the run's start even when it was resumed
            self.stages[-1]["last_epoch"] = getattr(trainer, "_last_trained_epoch", None)

    @staticmethod
    def summary(stage):
        """epochs, best epoch, mean seconds per epoch / validation pass, parameters and learning curve of one
        stage."""
        train, valid = stage["train"], stage["valid"]
        last = stage.get("last_epoch")
        trainer = stage["trainer"]
        return {
            "params": stage["params"],
            "epochs": last + 1 if last is not None else len(train),
            "best_epoch": trainer.best_epoch,
            "s_per_epoch": sum(train) / len(train) if train else None,
            "s_per_eval": sum(valid) / len(valid) if valid else None,
            "curve": learning_curve(trainer.train_loss_dict, getattr(trainer, "valid_score_dict", {})),
        }


def learning_curve(train_loss, valid_score):
    """``[{"epoch", "train_loss", "valid"}, ...]`` by epoch (counted from 0) from a trainer's or checkpoint's
    ``train_loss_dict`` / ``valid_score_dict``; ``valid`` is the ``valid_metric`` score, None for an epoch that
    was not validated (``eval_step`` > 1). A resumed run's checkpoints carry the epochs before the resume."""
    epochs = sorted({int(e) for e in train_loss} | {int(e) for e in valid_score})
    loss = {int(e): v for e, v in train_loss.items()}
    score = {int(e): v for e, v in valid_score.items()}
    return [{"epoch": e, "train_loss": None if loss.get(e) is None else float(loss[e]),
             "valid": None if score.get(e) is None else float(score[e])} for e in epochs]


def run_one(model, dataset, config_files, config_dict, label=None):
    """Train ``model`` to early stopping and test it; returns a plain record (never raises).

    ``label`` names the row (default: ``model``), e.g. ``SSD4Rec`` for TiM4Rec with ``is_time: False``.
    """
    import torch

    import recbole_timeplug.quick_start as qs

    probe = RunProbe()
    record = {"model": label or model, "class": model, "seed": config_dict.get("seed"),
              "config_files": [_repo_relative(f) for f in config_files],
              "config_dict": {k: v for k, v in config_dict.items() if k not in ("checkpoint_dir", "checkpoint_path")}}
    if config_dict.get("checkpoint_path"):
        record["resumed_from"] = config_dict["checkpoint_path"]
    start = time.perf_counter()
    try:
        result = qs.run_recbole(
            model, dataset, config_file_list=config_files, config_dict=config_dict, saved=True,
            epoch_listeners=[probe], per_user=True,
        )
        _record_result(record, result)
    except Exception as err:  # noqa: BLE001 - a failing model is reported in the table, not fatal
        traceback.print_exc()
        message = str(err).strip().splitlines()
        record.update(status="failed", error=f"{type(err).__name__}: {message[0] if message else ''}"[:300])
    final = probe.stages[-1] if probe.stages else None
    empty = {"params": None, "epochs": 0, "best_epoch": None, "s_per_epoch": None, "s_per_eval": None}
    if final:
        record.update(**probe.summary(final), settings=_settings(final["trainer"].config, model, dataset, label))
    elif record.get("resumed_from") and record.get("status") == "ok":
        # resumed from a -last checkpoint with no epoch left to train (it had stopped early or hit the cap, and
        # its row was lost): no trainer ran an epoch, so its epochs, curve and settings come from the checkpoint
        record.update(_checkpoint_numbers(config_dict["checkpoint_path"], model, dataset, label))
    else:
        record.update(**empty, settings=None)
    record["wall_s"] = time.perf_counter() - start
    # earlier stages (TiMiRec's pretrain): their own epochs and timings beside their metrics
    for numbers, stage in zip((record.get("stages") or {}).values(), probe.stages[:-1]):
        numbers.update(probe.summary(stage))
    del probe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _repo_relative(path):
    """A config file inside this checkout as a path relative to it (records compare across checkouts)."""
    full = os.path.abspath(path)
    return os.path.relpath(full, REPO) if full.startswith(REPO + os.sep) else path


def _record_result(record, result):
    """Metrics of a finished run into its record; per-user test metrics under ``per_user`` (saved apart)."""
    record.update(
        status="ok",
        test=result["test_result"],
        valid=result["best_valid_result"],
        best_valid_score=result["best_valid_score"],
        per_user=result.get("test_per_user"),
    )
    if result.get("stages"):  # multi-stage models (TiMiRec): each earlier stage's own numbers
        record["stages"] = result["stages"]


def _checkpoint_numbers(checkpoint, model, dataset, label=None, payload=None, config=None):
    """params, epochs, best epoch, curve and settings of a run from its checkpoint files (no timings): from the
    best-model file ``checkpoint`` and its ``-last`` file, or from a ``-last`` file alone (which names its best)."""
    import torch

    import recbole_timeplug.quick_start as qs
    from recbole_timeplug.checkpoint import load_checkpoint
    from recbole_timeplug.trainer import last_file_of

    payload = payload if payload is not None else load_checkpoint(checkpoint, map_location="cpu")
    if config is None:
        config, _ = qs.build_config(config_dict={"checkpoint_path": checkpoint})
    is_last = os.path.splitext(checkpoint)[0].endswith("-last")
    last = checkpoint if is_last else last_file_of(checkpoint)
    latest = payload if is_last else (load_checkpoint(last, map_location="cpu") if os.path.isfile(last) else None)
    last_epoch = None if latest is None else latest["epoch"]
    best_epoch = payload.get("best_epoch") if is_last else payload.get("epoch")
    latest = payload if latest is None or latest["epoch"] < payload["epoch"] else latest
    return dict(
        params=int(sum(v.numel() for v in payload["state_dict"].values() if torch.is_floating_point(v))),
        epochs=None if last_epoch is None else last_epoch + 1, best_epoch=best_epoch,
        s_per_epoch=None, s_per_eval=None, settings=_settings(config, model, dataset, label),
        curve=learning_curve(latest.get("train_loss_dict") or {}, latest.get("valid_score_dict") or {}),
    )


def import_one(label, checkpoint, dataset):
    """A record for a model trained elsewhere: its saved best weights evaluated on valid and test (no training).

    ``checkpoint`` is a best-model file written by a training run (RecBole's ``<Model>-<dataset>-<time>.pth``);
    epochs come from it and its ``-last`` file, settings from the configuration stored in it. Training times
    are unknown (``–``). A TiMiRec file's stage one (the file its checkpoint names, else ``-pretrain.pth``
    beside it) is imported as its stage row.
    """
    import recbole_timeplug.quick_start as qs
    from recbole_timeplug.checkpoint import load_checkpoint

    record = {"model": label, "imported_from": os.path.abspath(checkpoint)}
    start = time.perf_counter()
    try:
        payload = load_checkpoint(checkpoint, map_location="cpu")
        config, _ = qs.build_config(config_dict={"checkpoint_path": checkpoint})
        if dataset and config["dataset"] != dataset:
            raise ValueError(f"{checkpoint} was trained on {config['dataset']!r}, not on {dataset!r}")
        record.update({"class": payload["model"], "seed": config["seed"], "config_files": [],
                       "config_dict": {"checkpoint_path": os.path.abspath(checkpoint), "test_only": True}})
        record.update(_checkpoint_numbers(checkpoint, payload["model"], config["dataset"], label, payload, config))
        # a multi-stage run names its earlier stage's file in its checkpoint (TiMiRec); else the naming rule
        stage_file = ((payload.get("timirec_stages") or {}).get("pretrain") or {}).get("best_model_file")
        del payload
        result = qs.run_recbole(config_dict={"checkpoint_path": checkpoint, "test_only": True,
                                             "show_progress": False}, per_user=True)
        _record_result(record, result)
        stem = checkpoint[: -len(".pth")] if checkpoint.endswith(".pth") else checkpoint
        pretrain = stem + "-pretrain.pth"
        if stage_file and os.path.isfile(stage_file):
            pretrain = stage_file
        if os.path.isfile(pretrain):
            stage = import_one(f"{label} · pretrain", pretrain, dataset)
            record["stages"] = {"pretrain": {"test_result": stage.get("test"), "best_valid_score":
                                             stage.get("best_valid_score"), "best_valid_result": stage.get("valid"),
                                             "test_per_user": stage.get("per_user"), "params": stage.get("params"),
                                             "epochs": stage.get("epochs"), "best_epoch": stage.get("best_epoch"),
                                             "curve": stage.get("curve")}}
    except Exception as err:  # noqa: BLE001 - reported in the table like a failed run
        traceback.print_exc()
        message = str(err).strip().splitlines()
        record.update(status="failed", error=f"{type(err).__name__}: {message[0] if message else ''}"[:300])
        empty = {"config_files": [], "config_dict": {}}  # the fields a table row reads; None otherwise
        for key in ("class", "seed", "config_files", "config_dict", "params", "epochs", "best_epoch",
                    "s_per_epoch", "s_per_eval", "settings"):
            record.setdefault(key, empty.get(key))
    record["wall_s"] = time.perf_counter() - start
    gc.collect()
    return record


def _model_keys(model, dataset, label=None):
    """Hyperparameter keys of a model: the keys of RecBole's, this package's and the baseline YAMLs."""
    import recbole
    import yaml

    from recbole_timeplug.registry import model_config_files

    paths = [os.path.join(os.path.dirname(recbole.__file__), "properties", "model", f"{model}.yaml")]
    paths += [p for p in model_config_files(model, dataset) if not p.endswith("overall.yaml")]
    paths += [os.path.join(BASELINE_DIR, f"{name}.yaml") for name in dict.fromkeys([model, label or model])]
    keys = []
    for path in paths:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for key in (yaml.safe_load(f) or {}):
                    if key not in keys:
                        keys.append(key)
    return keys


def _plainify(value):
    if isinstance(value, dict):
        return {str(k): _plainify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plainify(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _settings(config, model, dataset, label=None):
    out = {}
    for key in _model_keys(model, dataset, label) + RUN_KEYS:
        if key in out or key == "model":
            continue
        try:
            value = config[key]
        except Exception:  # noqa: BLE001 - a key RecBole does not know
            continue
        out[key] = _plainify(value)
    return out


# ------------------------------------------------------------------------------------ aggregation
def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def aggregate(records, models, metrics=None):
    """Per model: mean/std of each metric over the seeds that finished, plus errors of those that did not."""
    rows = []
    for model in models:
        runs = [r for r in records if r["model"] == model]
        ok = [r for r in runs if r["status"] == "ok"]
        row = {"model": model, "n_ok": len(ok), "n_runs": len(runs),
               "errors": sorted({r["error"] for r in runs if r["status"] != "ok"})}
        for metric in metrics or METRICS:
            row[metric] = _mean_std([(r["test"] or {}).get(metric) for r in ok])
        row["valid"] = _mean_std([r["best_valid_score"] for r in ok])
        for key in ("params", "epochs", "best_epoch", "s_per_epoch", "s_per_eval"):
            row[key] = _mean_std([r[key] for r in ok])
        # stopped by the `epochs` cap rather than by early stopping (still improving, or just not patient enough)
        row["capped"] = any(r["epochs"] is not None and r["epochs"] >= ((r.get("settings") or {}).get("epochs") or 10**9)
                            for r in ok)
        rows.append(row)
    return rows


def _fmt(mean_std, digits=4):
    mean, std = mean_std
    if mean is None:
        return "–"
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def _fmt_int(mean_std):
    mean, std = mean_std
    if mean is None:
        return "–"
    return f"{mean:,.0f}" if std is None or std == 0 else f"{mean:,.1f} ± {std:.1f}"


def stage_records(record):
    """Rows for the earlier stages of a multi-stage run, e.g. ``TiMiRec · pretrain`` (= ComiRec+).

    The probe times every stage, so these rows carry the stage's own epochs and timings when it ran in this
    process (``–`` otherwise, e.g. for records written before stages were timed).
    """
    rows = []
    for stage, numbers in (record.get("stages") or {}).items():
        if not numbers.get("test_result"):
            continue
        rows.append({
            **{k: record[k] for k in ("class", "seed", "config_files", "config_dict", "settings", "made_by",
                                      "imported_from") if k in record},
            "model": f"{record['model']} · {stage}", "stage_of": record["model"], "status": "ok",
            "test": numbers["test_result"], "valid": numbers.get("best_valid_result"),
            "best_valid_score": numbers.get("best_valid_score"), "params": numbers.get("params"),
            "epochs": numbers.get("epochs"), "best_epoch": numbers.get("best_epoch"),
            "s_per_epoch": numbers.get("s_per_epoch"), "s_per_eval": numbers.get("s_per_eval"),
            "per_user": numbers.get("test_per_user"), "curve": numbers.get("curve"),
        })
    return rows


# ------------------------------------------------------------------------------------ significance
ALPHA = 0.05
SIGNIFICANCE_METRIC = "ndcg@10"  # the metric of the detailed tables (the main table marks every metric)


def _per_user_runs(records, out):
    """``{model: {seed: {user: {metric: value}}}}`` from the per-user files of the records that have one."""
    runs = {}
    for record in records:
        name = record.get("per_user_file")
        if record.get("status") != "ok" or not name:
            continue
        path = os.path.join(out, name)
        if not os.path.isfile(path):
            print(f"results.py: {path} is missing: {record['model']} seed {record.get('seed')} "
                  f"is left out of the paired tests", file=sys.stderr)
            continue
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        users = data["users"] or list(range(len(next(iter(data["metrics"].values())))))
        runs.setdefault(record["model"], {})[record.get("seed")] = _user_means(users, data["metrics"])
    return runs


def _user_means(users, metrics):
    """``{user: {metric: mean over the user's test cases}}``: the paired tests' unit is the user.

    Leave-one-out tests each user once. A split that tests a user several times (ARERec's 80/20 protocol:
    every rating in a user's last 20 %) gives cases of one user that are not independent, so they are averaged
    into one value per user before any test; pairing cases one by one would overstate the evidence.
    """
    sums, counts = {}, {}
    for i, u in enumerate(users):
        counts[u] = counts.get(u, 0) + 1
        row = sums.setdefault(u, {})
        for m, values in metrics.items():
            row[m] = row.get(m, 0.0) + values[i]
    return {u: {m: total / counts[u] for m, total in row.items()} for u, row in sums.items()}


def _paired_arrays(a_runs, b_runs, metric, seeds=None):
    """Values of the users both sides have, each averaged over that side's seeds (or over ``seeds``)."""
    def has_metric(runs):
        return all(metric in values for run in runs.values() for values in run.values())

    if not has_metric(a_runs) or not has_metric(b_runs):
        return None

    def pooled(runs):
        chosen = [runs[s] for s in (seeds or sorted(runs, key=str)) if s in runs]
        users = set.intersection(*(set(r) for r in chosen)) if chosen else set()
        return {u: sum(r[u][metric] for r in chosen) / len(chosen) for u in users}, len(chosen)

    a, na = pooled(a_runs)
    b, nb = pooled(b_runs)
    users = sorted(set(a) & set(b), key=str)
    if not users or not na or not nb:
        return None
    import numpy as np

    return np.array([a[u] for u in users]), np.array([b[u] for u in users])


def _compare(a_runs, b_runs, metric):
    """Pooled (per-user mean over seeds) Wilcoxon p and bootstrap CI of the mean difference, and per-seed p."""
    from recbole_timeplug.evaluation import paired_bootstrap_ci, wilcoxon_p

    pair = _paired_arrays(a_runs, b_runs, metric)
    if pair is None:
        return None
    diff, low, high = paired_bootstrap_ci(*pair)
    per_seed = {}
    for seed in sorted(set(a_runs) & set(b_runs), key=str):
        seeded = _paired_arrays(a_runs, b_runs, metric, seeds=[seed])
        if seeded is not None:
            per_seed[seed] = wilcoxon_p(*seeded)
    return {"n_users": len(pair[0]), "diff": diff, "ci": (low, high), "p": wilcoxon_p(*pair), "per_seed": per_seed}


def significance(records, models, out, reference="SASRec", pairs=(), metrics=None):
    """Paired tests over users: every row against ``reference`` (every metric) and each ablation pair.

    Holm's correction runs over the rows tested against the reference (per metric) and over the pairs.
    A marker is ▲ / ▼ when the Holm-adjusted pooled p < ALPHA and the mean difference is positive /
    negative. Returns ``None`` when no run has per-user metrics.
    """
    from recbole_timeplug.evaluation import holm

    metrics = metrics or METRICS
    runs = _per_user_runs(records, out)
    if not runs:
        return None
    # the detailed tables' metric: NDCG@10 if shown, else the first NDCG column, else the first column
    main = SIGNIFICANCE_METRIC if SIGNIFICANCE_METRIC in metrics else next(
        (m for m in metrics if m.startswith("ndcg@")), metrics[0])
    result = {"reference": reference, "metric": main, "markers": {}, "vs_reference": {}, "pairs": []}
    if reference in runs:
        others = [m for m in models if m != reference and m in runs]
        for metric in metrics:
            tests = [_compare(runs[m], runs[reference], metric) for m in others]
            adjusted = holm([t["p"] if t else None for t in tests])
            for model, test, p_adj in zip(others, tests, adjusted):
                if test is None:
                    continue
                test["p_holm"] = p_adj
                result["vs_reference"].setdefault(model, {})[metric] = test
                if p_adj is not None and p_adj < ALPHA and test["diff"] != 0:
                    result["markers"][(model, metric)] = "▲" if test["diff"] > 0 else "▼"
    tests = [(a, b, _compare(runs[a], runs[b], main) if a in runs and b in runs else None)
             for a, b in pairs]
    for (a, b, test), p_adj in zip(tests, holm([t["p"] if t else None for _, _, t in tests])):
        if test is not None:
            test["p_holm"] = p_adj
        result["pairs"].append((a, b, test))
    return result


def _fmt_p(p):
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def _significance_lines(stats, rows, dataset):
    ref, metric = stats["reference"], stats["metric"]
    label = metric_label(metric)
    means = {row["model"]: row[metric][0] for row in rows}
    lines = [f"## Paired tests against {ref}", "",
             f"Each user's test {label} (the mean of the user's test cases where a split tests a user more than "
             f"once, averaged over the seeds a model has), paired by user with {ref}'s: "
             f"Wilcoxon signed-rank p (two-sided), Holm-corrected over the rows of this table, and a 95 % "
             f"paired-bootstrap CI of the mean difference (10,000 resamples of the users). `per seed`: the same "
             f"test on one seed of each (uncorrected). In the table above, ▲ / ▼ mark a significantly higher / "
             f"lower mean than {ref} (Holm-adjusted p < {ALPHA}, every metric corrected on its own); no mark = "
             f"no significant difference.", "",
             f"| Model | {label} | Δ vs {ref} [95 % CI] | p | p (Holm) | p per seed | users |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for model, tests in stats["vs_reference"].items():
        t = tests.get(metric)
        if t is None:
            continue
        seeds = ", ".join(f"{s}: {_fmt_p(p)}" for s, p in t["per_seed"].items()) or "–"
        mark = stats["markers"].get((model, metric), "")
        lines.append(f"| {model} | {means.get(model, 0):.4f}{mark} | {t['diff']:+.4f} [{t['ci'][0]:+.4f}, "
                     f"{t['ci'][1]:+.4f}] | {_fmt_p(t['p'])} | {_fmt_p(t['p_holm'])} | {seeds} | {t['n_users']} |")
    lines.append("")
    if stats["pairs"]:
        lines += ["## Does the idea help", "",
                  f"Each model against its own ablation (the idea switched off), paired by user on test {label}; "
                  f"Holm-corrected over the pairs.", "",
                  f"| Model | Ablation | {label} | ablation's | Δ [95 % CI] | p | p (Holm) | p per seed |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for a, b, t in stats["pairs"]:
            if t is None:
                lines.append(f"| {a} | {b} | – | – | (no per-user metrics for both) | | | |")
                continue
            seeds = ", ".join(f"{s}: {_fmt_p(p)}" for s, p in t["per_seed"].items()) or "–"
            mark = ("▲" if t["diff"] > 0 else "▼") if t["p_holm"] is not None and t["p_holm"] < ALPHA else ""
            lines.append(f"| {a} | {b} | {means.get(a, 0):.4f}{mark} | {means.get(b, 0):.4f} | {t['diff']:+.4f} "
                         f"[{t['ci'][0]:+.4f}, {t['ci'][1]:+.4f}] | {_fmt_p(t['p'])} | {_fmt_p(t['p_holm'])} | "
                         f"{seeds} |")
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------ outputs
def _environment():
    import recbole
    import torch

    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        commit = "unknown"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "recbole": recbole.__version__,
        "commit": commit,
    }


def _command(args):
    parts = ["python benchmarks/results.py", f"--dataset {args.dataset}"]
    if args.models:
        parts.append(f"--models {','.join(args.models)}")
    if args.config_files:
        parts.append(f"--config_files \"{' '.join(args.config_files)}\"")
    if args.models:
        parts.append(f"--seeds {','.join(map(str, args.seeds))}")
    parts += [f"--import {label}={os.path.basename(path)}" for label, path in args.imports]
    if args.epochs is not None:
        parts.append(f"--epochs {args.epochs}")
    parts += [f"--set {o}" for o in args.overrides]
    parts.append(f"--out {args.out}")
    if args.append:
        parts.append("--append")
    return " ".join(parts)


def _run_command(record, dataset):
    files = " ".join(os.path.relpath(f, REPO) if f.startswith(REPO) else f for f in record["config_files"])
    extra = " ".join(f"--{k}={v!r}" if isinstance(v, (list, dict)) else f"--{k}={v}"
                     for k, v in record["config_dict"].items() if k not in ("show_progress",))
    if record.get("imported_from"):  # what tested it here; the training command is the checkpoint's
        return f"python run_recbole.py {extra}"
    model = record.get("class", record["model"])
    return f'python run_recbole.py --model={model} --dataset={dataset} --config_files="{files}" {extra}'.strip()


def write_markdown(path, dataset, commands, records, models, rows, chart_name, stats=None, metrics=None,
                   curves_name=None):
    """``commands``: [(command, environment)] of every results.py run whose records are in the table;
    ``stats``: :func:`significance`'s result (markers and the paired-test sections), if any."""
    markers = (stats or {}).get("markers", {})
    metrics = metrics or METRICS
    first_ok = next((r for r in records if r["status"] == "ok" and r["settings"]), None)
    lines = [f"# Results on `{dataset}`", "", "Made by (column `by` of the table):", ""]
    for i, (command, e) in enumerate(commands):
        lines.append(f"{i + 1}. `{command}` (started {e['date']}) — {e['device']}, "
                     f"Python {e['python']}, torch {e['torch']}, RecBole {e['recbole']}, commit `{e['commit']}`")
    lines.append("")
    command_number = {c: i + 1 for i, (c, _) in enumerate(commands)}
    if first_ok:
        s = first_ok["settings"]
        ev = s.get("eval_args") or {}
        lines.append(
            "**Protocol** ({}): split `{}`, order `{}`, grouped by `{}`, "
            "ranking mode `{}` "
            "(full = all items), user/item filters `{}` / `{}`; test metrics at the epoch with the best "
            "validation `{}` (early stopping after `{}` epochs without improvement).".format(
                " then ".join(f"`{f}`" for f in ["baseline/common_protocol.yaml"] + list(first_ok.get("config_files") or [])),
                ev.get("split"), ev.get("order"), ev.get("group_by"), ev.get("mode"),
                s.get("user_inter_num_interval"), s.get("item_inter_num_interval"), s.get("valid_metric"),
                s.get("stopping_step")))
        lines.append("")
    seed_list = sorted({r["seed"] for r in records if r.get("seed") is not None})
    seeds = ", ".join(map(str, seed_list))
    lines.append(f"Seeds: {seeds}" + (" — cells are mean ± std (ddof=1) over the seeds that finished." if len(seed_list) > 1 else "."))
    lines.append("`s/epoch` = training time per epoch, `s/eval` = one validation pass (ranking mode above), "
                 "`epochs` = epochs trained (best epoch in brackets, counting from 0).")
    lines.append("")
    header = ["Model"] + [metric_label(m) for m in metrics] + ["valid", "params", "epochs", "s/epoch", "s/eval",
                                                                "seeds", "by"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    best = {m: max((r[m][0] for r in rows if r[m][0] is not None), default=None) for m in metrics}
    for row in rows:
        if row["n_ok"] == 0:
            err = "; ".join(row["errors"]).replace("|", "\\|")
            lines.append(f"| {row['model']} | **failed**: {err} |" + " |" * (len(header) - 2))
            continue
        cells = [row["model"]]
        for m in metrics:
            cell = _fmt(row[m])
            cell = f"**{cell}**" if best[m] is not None and row[m][0] == best[m] and len(rows) > 1 else cell
            cells.append(cell + markers.get((row["model"], m), ""))
        epochs = _fmt_int(row["epochs"]) + ("†" if row["capped"] else "") \
            + (f" ({_fmt_int(row['best_epoch'])})" if row["best_epoch"][0] is not None else "")
        by = sorted({command_number[r["made_by"]] for r in records
                     if r["model"] == row["model"] and r.get("made_by") in command_number})
        cells += [_fmt(row["valid"]), _fmt_int(row["params"]), epochs, _fmt(row["s_per_epoch"], 2),
                  _fmt(row["s_per_eval"], 2), str(row["n_ok"]), ", ".join(map(str, by)) or "–"]
        if row["errors"]:
            cells[0] += f" ({row['n_ok']}/{row['n_runs']} seeds; failed: {'; '.join(row['errors'])})".replace("|", "\\|")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")  # a line right after a table would be read as one more row
    if any(row.get("capped") for row in rows):
        lines.append("† stopped by the `epochs` cap, not by early stopping: these numbers are not converged.")
    staged = sorted({r["stage_of"] for r in records if r.get("stage_of")})
    if staged:
        lines.append(f"Multi-stage models ({', '.join(staged)}): the `· <stage>` row is the earlier stage's model "
                     "tested on the same split (for TiMiRec, pretrain only = ComiRec+); the main row's epochs and "
                     "timings are its last stage's, each stage having the same epoch budget.")
    lines.append("")
    if any(r.get("imported_from") for r in records):
        lines.append("Rows of runs imported with `--import` (trained by another command, tested here from their "
                     "saved best weights) have no training times; their checkpoints are named under Exact settings.")
        lines.append("")
    if chart_name:
        lines += [f"![test metrics on {dataset}]({chart_name})", ""]
    if curves_name:
        lines += [f"Learning curves (validation score per epoch, one line per seed; ● = the epoch tested; the "
                  f"numbers are in each record's `curve` in `{dataset}.json`):", "",
                  f"![validation curves on {dataset}]({curves_name})", ""]
    if stats:
        lines += _significance_lines(stats, rows, dataset)
    lines += ["## Exact settings", ""]
    for model in models:
        rec = next((r for r in records if r["model"] == model and r["settings"]), None)
        lines.append(f"### {model}")
        lines.append("")
        rec_any = next(r for r in records if r["model"] == model)
        lines += ["```", _run_command(rec_any, dataset), "```", ""]
        imported = sorted({os.path.basename(r["imported_from"]) for r in records
                           if r["model"] == model and r.get("imported_from")})
        if imported:
            lines += ["Imported from " + ", ".join(f"`{name}`" for name in imported)
                      + " (the stored settings are the training run's).", ""]
        if rec is None:
            lines += ["(no configuration: the run failed before its trainer was built)", ""]
            continue
        lines += ["| key | value |", "|---|---|"]
        for key, value in rec["settings"].items():
            if key == "seed":
                continue
            text = json.dumps(value) if not isinstance(value, str) else value
            lines.append(f"| `{key}` | `{text}` |")
        lines.append("")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(path, dataset, rows, markers=None, metrics=None):
    """Grouped bar chart of the test metrics (error bars = std over seeds, ▲/▼ = significant difference from
    the reference model, see :func:`significance`); False if matplotlib is missing."""
    markers = markers or {}
    metrics = metrics or METRICS
    plt = _pyplot()
    if plt is None:
        print("results.py: matplotlib is not installed - skipping the charts "
              "(install it with `pip install -e \".[plot]\"` or `pip install matplotlib`).", file=sys.stderr)
        return False
    rows = [r for r in rows if r["n_ok"] > 0]
    if not rows:
        return False
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(metrics) + 0.3 * len(rows)), 4.0))
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(metrics))]
        means = [row[m][0] or 0.0 for m in metrics]
        errs = [row[m][1] or 0.0 for m in metrics]
        ax.bar(xs, means, width, yerr=errs if any(errs) else None, capsize=2, label=row["model"],
               color=plt.cm.tab20.colors[i % 20])  # the default cycle repeats after 10 rows
        for x, metric, mean, err in zip(xs, metrics, means, errs):
            if (row["model"], metric) in markers:
                ax.text(x, mean + err, markers[(row["model"], metric)], ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([metric_label(m) for m in metrics])
    ax.set_ylabel("test score")
    ax.set_title(f"{dataset}: test metrics (full ranking, leave-one-out)")
    # below the axes: inside, the legend hides the tallest bars (Hit@20)
    ax.legend(fontsize="small", ncol=min(5, len(rows)), loc="upper center", bbox_to_anchor=(0.5, -0.1),
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_curves(path, dataset, records, models):
    """One panel per model: every run's validation score per epoch (a line per seed, ● at its best epoch), from
    the records' ``curve``; False if matplotlib is missing (:func:`plot` says so) or no run has a curve."""
    plt = _pyplot()
    if plt is None:
        return False
    panels = []
    for model in models:
        runs = [r for r in records if r.get("model") == model and r.get("status") == "ok"
                and any(p.get("valid") is not None for p in r.get("curve") or [])]
        if runs:
            panels.append((model, sorted(runs, key=lambda r: (r.get("seed") is None, r.get("seed")))))
    if not panels:
        return False
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharey=True)
    metric = (panels[0][1][0].get("settings") or {}).get("valid_metric", "validation score")
    for ax, (model, runs) in zip(axes.flat, panels):
        for i, run in enumerate(runs):
            points = [(p["epoch"], p["valid"]) for p in run["curve"] if p.get("valid") is not None]
            color = plt.cm.tab10.colors[i % 10]
            ax.plot([e for e, _ in points], [v for _, v in points], color=color, lw=1, label=f"seed {run.get('seed')}")
            best = dict(points).get(run.get("best_epoch"))
            if best is not None:
                ax.plot([run["best_epoch"]], [best], "o", color=color, ms=3)
        ax.set_title(model, fontsize="small")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="x-small")
        ax.legend(fontsize="xx-small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"valid {metric}", fontsize="small")
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch", fontsize="small")
    fig.suptitle(f"{dataset}: validation curves", fontsize="medium")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------ main
@contextlib.contextmanager
def _locked(folder):
    """An exclusive advisory lock on ``folder`` (POSIX, leaves no file behind); a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _load_table(json_path):
    """Records and commands of an earlier table (a clear error if it cannot be read)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            saved = json.load(f)
        records = saved["records"]
        commands = [(c["command"], c["environment"]) for c in saved["commands"]] if "commands" in saved \
            else [(saved["command"], saved["environment"])]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"results.py: --append cannot read the earlier table {json_path} ({err}); "
                         f"fix or move that file, or run without --append to replace it") from err
    return records, commands


def _saved_options(json_path):
    try:
        with open(json_path, encoding="utf-8") as f:
            return {"pairs": json.load(f).get("pairs") or []}
    except (OSError, ValueError, AttributeError):
        return {}


def _run_key(record):
    """What makes two trained runs the same run: model, config files and settings other than the seed."""
    config = {k: v for k, v in (record.get("config_dict") or {}).items() if k != "seed"}
    return record["model"], json.dumps(record.get("config_files") or []), json.dumps(config, sort_keys=True, default=str)


def _merge(old_records, old_commands, new_records, new_commands):
    """The earlier table's records that the new ones do not replace, then the new ones; commands to match.

    A new record replaces the old record of the same (model, seed) and its stage rows. A model trained now
    with other settings also drops its old runs that used other settings: one row, one configuration. Runs
    of the same model and settings with other seeds stay (seeds accumulate).
    """
    replaced = {(r["model"], r.get("seed")) for r in new_records}
    trained = {r["model"]: _run_key(r) for r in new_records if not r.get("stage_of") and not r.get("imported_from")}

    def kept(old):
        owner = old.get("stage_of") or old["model"]
        if (old["model"], old.get("seed")) in replaced or (owner, old.get("seed")) in replaced:
            return False
        if owner in trained and not old.get("imported_from"):  # (a stage row carries its run's settings)
            return _run_key(dict(old, model=owner)) == trained[owner]
        return True

    records = [r for r in old_records if kept(r)] + new_records
    used = {r.get("made_by") for r in records}
    commands = [c for c in old_commands if c[0] in used and c not in new_commands] + new_commands
    return records, commands


def _safe_name(text):
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text.replace(" · ", "-")).strip("-")


def _save_per_user(records, out, dataset):
    """Each record's per-user test metrics into ``<out>/per_user/<dataset>/<model>-seed<seed>.json``."""
    folder = os.path.join(out, "per_user", dataset)
    for record in records:
        per_user = record.pop("per_user", None)
        if per_user is None:
            continue
        os.makedirs(folder, exist_ok=True)
        name = f"{_safe_name(record['model'])}-seed{record.get('seed')}.json"
        data = {"model": record["model"], "seed": record.get("seed"), "users": per_user.get("user_id"),
                "metrics": {k: [round(float(x), 7) for x in v] for k, v in per_user.items() if k != "user_id"}}
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        record["per_user_file"] = os.path.join("per_user", dataset, name)


def main(argv=None):
    args = parse_args(argv)
    # RecBole's Config reads --key=value from sys.argv: keep this script's own flags out of it.
    sys.argv = sys.argv[:1]
    import recbole_timeplug  # noqa: F401  (compat fixes, plugin registry)

    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, f"{args.dataset}.json")
    if args.render:
        if not os.path.isfile(json_path):
            raise SystemExit(f"results.py: --render needs {json_path}, written by an earlier run of this script")
        with _locked(args.out):
            records, commands = _load_table(json_path)
            models = list(dict.fromkeys(r["model"] for r in records))
            models = sorted(models, key=lambda m: _order_key(m, args.models, models))
            _write_outputs(args, json_path, records, commands, models)
        return records
    earlier = []
    if args.append and os.path.isfile(json_path):
        earlier, _ = _load_table(json_path)  # an unreadable table fails now, before hours of training
    env = _environment()  # now: the commit whose code this process runs, the date its runs started
    ckpt_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="timeplug_results_")
    records, skipped = [], []
    try:
        for label in args.models:
            model, label = resolve_model(label, args.baseline_dir)
            files = config_files_for(label, args.baseline_dir, args.config_files)
            for seed in args.seeds:
                config_dict = {"seed": seed, "show_progress": False, "log_wandb": False,
                               "checkpoint_dir": os.path.join(ckpt_dir, f"{label}-seed{seed}")}
                if args.epochs is not None:
                    config_dict["epochs"] = args.epochs
                config_dict.update(args.global_set)
                config_dict.update(args.model_set.get(label, {}))
                plain = {k: v for k, v in config_dict.items() if k != "checkpoint_dir"}
                done = next((r for r in earlier if r["status"] == "ok" and not r.get("imported_from")
                             and r.get("seed") == seed and _run_key(r) == _run_key(
                                 {"model": label, "config_files": [_repo_relative(f) for f in files],
                                  "config_dict": plain})), None)
                if done is not None and not args.rerun:
                    print(f"results.py: {label} (seed {seed}) is in {json_path} already: kept, not run again "
                          f"(--rerun trains it again)", flush=True)
                    skipped.append((label, seed))
                    continue
                partial = (_unfinished_run(config_dict["checkpoint_dir"], model, args.dataset, files, config_dict)
                           if args.checkpoint_dir and not args.rerun else None)
                if partial:  # an interrupted run of this table: continue it exactly from its last epoch
                    config_dict["checkpoint_path"] = partial
                    print(f"results.py: {label} (seed {seed}) resumes from {partial}", flush=True)
                print(f"results.py: {label} (seed {seed}) on {args.dataset} ...", flush=True)
                record = run_one(model, args.dataset, files, config_dict, label=label)
                records.append(record)
                records += stage_records(record)
                _report(record, label, seed)
        for label, path in args.imports:
            print(f"results.py: {label} from {path} (saved weights, no training) ...", flush=True)
            record = import_one(label, path, args.dataset)
            records.append(record)
            records += stage_records(record)
            _report(record, label, record.get("seed"))
    finally:
        if args.checkpoint_dir is None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    commands = [(_command(args), env)]
    for record in records:
        record["made_by"] = commands[0][0]
        for numbers in (record.get("stages") or {}).values():
            numbers.pop("test_per_user", None)  # saved with the stage's own row
    _save_per_user(records, args.out, args.dataset)
    new_records = records
    with _locked(args.out):  # parallel --append runs on one table take turns here
        models = list(dict.fromkeys(r["model"] for r in records))  # the models asked for + their stage rows
        if args.append and os.path.isfile(json_path):
            old_records, old_commands = _load_table(json_path)  # re-read: a parallel run may have added rows
            records, commands = _merge(old_records, old_commands, records, commands)
            models = list(dict.fromkeys([r["model"] for r in old_records] + models))
            models = [m for m in models if any(r["model"] == m for r in records)]
        _write_outputs(args, json_path, records, commands, models)
    return new_records


# settings a stopped run may be continued under: another epoch cap continues the same run
RESUMABLE_ACROSS = frozenset({"epochs"})


def _unfinished_run(folder, model, dataset, config_files, config_dict):
    """The newest ``-last`` checkpoint in a (model, seed) checkpoint folder of ``--checkpoint_dir`` that a run with
    these settings left: a run stopped before it reached the table (finished runs with the same settings are in the
    table and never get here).  A ``-last`` file written under other settings (the same label and seed trained with
    another ``--set`` or config file) is left alone, so the run starts afresh instead of continuing someone else's."""
    if not os.path.isdir(folder):
        return None
    lasts = sorted((os.path.join(folder, f) for f in os.listdir(folder) if f.endswith("-last.pth")),
                   key=os.path.getmtime, reverse=True)
    if not lasts:
        return None
    wanted = _user_settings(model, dataset, config_files, config_dict)
    for path in lasts:
        from recbole_timeplug.checkpoint import load_checkpoint

        payload = load_checkpoint(path, map_location="cpu")
        stored = _comparable(payload.get("external_config") or {})
        if payload.get("model") == model and payload.get("dataset") == dataset and stored == wanted:
            return path
        print(f"results.py: {path} was written under other settings: not resumed", flush=True)
    return None


def _user_settings(model, dataset, config_files, config_dict):
    """The user-set configuration (files + dict) a run with these arguments has, as its checkpoints store it."""
    from recbole_timeplug.checkpoint import plain_external_config
    from recbole_timeplug.config import Config

    return _comparable(plain_external_config(Config(model=model, dataset=dataset, config_file_list=list(config_files),
                                                    config_dict=dict(config_dict))))


def _comparable(external):
    keep = {k: v for k, v in external.items() if k not in RESUMABLE_ACROSS and k != "checkpoint_dir"}
    return json.dumps(keep, sort_keys=True, default=str)


def _report(record, label, seed):
    if record["status"] == "ok":
        shown = ", ".join(f"{k}={v:.4f}" for k, v in list((record["test"] or {}).items())[:4])
        timing = f", {record['s_per_epoch']:.2f} s/epoch" if record.get("s_per_epoch") else ""
        print(f"results.py: {label} seed {seed}: test {shown}, {record['epochs']} epochs{timing}", flush=True)
    else:
        print(f"results.py: {label} seed {seed} FAILED: {record['error']}", flush=True)


def _order_key(model, wanted, models):
    """Rows in --models order (a stage row right after its model), the others after them as they were."""
    base = model.split(" · ")[0]
    if base in wanted:
        return (0, wanted.index(base), model != base)
    return (1, models.index(model), False)


def _write_outputs(args, json_path, records, commands, models):
    saved = _saved_options(json_path)
    args.pairs = args.pairs or [tuple(p) for p in saved.get("pairs", [])]  # kept from the run that gave them
    rows = aggregate(records, models, args.metrics)
    stats = significance(records, models, args.out, args.reference, args.pairs, args.metrics)
    chart = f"{args.dataset}.png"
    drew = False if args.no_plot else plot(os.path.join(args.out, chart), args.dataset, rows,
                                           (stats or {}).get("markers"), args.metrics)
    curves = f"{args.dataset}_curves.png"
    drew_curves = False if args.no_plot else plot_curves(os.path.join(args.out, curves), args.dataset, records,
                                                         [r["model"] for r in rows])
    md_path = os.path.join(args.out, f"{args.dataset}.md")
    write_markdown(md_path, args.dataset, commands, records, models, rows, chart if drew else None, stats,
                   args.metrics, curves if drew_curves else None)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"commands": [{"command": c, "environment": e} for c, e in commands], "pairs": args.pairs,
                   "records": records}, f, indent=1, default=str)
    drawn = [os.path.join(args.out, name) for name, done in ((chart, drew), (curves, drew_curves)) if done]
    print(f"results.py: wrote {md_path}" + "".join(f" and {name}" for name in drawn))


if __name__ == "__main__":
    main()
