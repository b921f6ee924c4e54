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
With several seeds the table shows mean ± std (sample std, ddof=1) over the seeds that finished.
``--append`` adds to an existing ``<out>/<dataset>.json`` (models run now replace their old rows), so a
table can be filled by several processes in parallel or grown one model at a time; the table then names
every command that contributed. ``--render`` rewrites the table and chart from that JSON without training
(``--models`` then sets the row order). A run stopped by the ``epochs`` cap rather than by early stopping
is marked † in the table. A multi-stage model (TiMiRec) also gets a row per earlier stage
(``TiMiRec · pretrain`` = ComiRec+), tested on the same split.
A model that fails is reported in the table with its error; the other models still run.
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

METRICS = ["hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20", "mrr@20"]
METRIC_LABELS = {m: m.split("@")[0].replace("hit", "Hit").replace("ndcg", "NDCG").replace("mrr", "MRR")
                 + "@" + m.split("@")[1] for m in METRICS}

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
    p.add_argument("--render", action="store_true",
                   help="train nothing: rewrite <dataset>.md/.png from <out>/<dataset>.json (e.g. after installing "
                        "matplotlib); --models, if given, puts those rows first in that order")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models and not args.render:
        p.error("--models is empty: give comma-separated model names, e.g. --models SASRec,GRU4Rec")
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
    return args


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
            self.stages.append({"trainer": trainer, "params": params, "train": [], "valid": []})
        self.stages[-1][kind].append(seconds)

    @staticmethod
    def summary(stage):
        """epochs, best epoch, mean seconds per epoch / validation pass and parameters of one stage."""
        train, valid = stage["train"], stage["valid"]
        return {
            "params": stage["params"],
            "epochs": len(train),
            "best_epoch": stage["trainer"].best_epoch,
            "s_per_epoch": sum(train) / len(train) if train else None,
            "s_per_eval": sum(valid) / len(valid) if valid else None,
        }


def run_one(model, dataset, config_files, config_dict, label=None):
    """Train ``model`` to early stopping and test it; returns a plain record (never raises).

    ``label`` names the row (default: ``model``), e.g. ``SSD4Rec`` for TiM4Rec with ``is_time: False``.
    """
    import torch

    import recbole_timeplug.quick_start as qs

    probe = RunProbe()
    record = {"model": label or model, "class": model, "seed": config_dict.get("seed"), "config_files": config_files,
              "config_dict": {k: v for k, v in config_dict.items() if k != "checkpoint_dir"}}
    start = time.perf_counter()
    try:
        result = qs.run_recbole(
            model, dataset, config_file_list=config_files, config_dict=config_dict, saved=True, epoch_listeners=[probe]
        )
        record.update(
            status="ok",
            test=result["test_result"],
            valid=result["best_valid_result"],
            best_valid_score=result["best_valid_score"],
        )
        if result.get("stages"):  # multi-stage models (TiMiRec): each earlier stage's own numbers
            record["stages"] = result["stages"]
    except Exception as err:  # noqa: BLE001 - a failing model is reported in the table, not fatal
        traceback.print_exc()
        message = str(err).strip().splitlines()
        record.update(status="failed", error=f"{type(err).__name__}: {message[0] if message else ''}"[:300])
    final = probe.stages[-1] if probe.stages else None
    empty = {"params": None, "epochs": 0, "best_epoch": None, "s_per_epoch": None, "s_per_eval": None}
    record.update(
        wall_s=time.perf_counter() - start,
        **(probe.summary(final) if final else empty),
        settings=_settings(final["trainer"].config, model, dataset, label) if final else None,
    )
    # earlier stages (TiMiRec's pretrain): their own epochs and timings beside their metrics
    for numbers, stage in zip((record.get("stages") or {}).values(), probe.stages[:-1]):
        numbers.update(probe.summary(stage))
    del probe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
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


def aggregate(records, models):
    """Per model: mean/std of each metric over the seeds that finished, plus errors of those that did not."""
    rows = []
    for model in models:
        runs = [r for r in records if r["model"] == model]
        ok = [r for r in runs if r["status"] == "ok"]
        row = {"model": model, "n_ok": len(ok), "n_runs": len(runs),
               "errors": sorted({r["error"] for r in runs if r["status"] != "ok"})}
        for metric in METRICS:
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
            **{k: record[k] for k in ("class", "seed", "config_files", "config_dict", "settings", "made_by")
               if k in record},
            "model": f"{record['model']} · {stage}", "stage_of": record["model"], "status": "ok",
            "test": numbers["test_result"], "valid": numbers.get("best_valid_result"),
            "best_valid_score": numbers.get("best_valid_score"), "params": numbers.get("params"),
            "epochs": numbers.get("epochs"), "best_epoch": numbers.get("best_epoch"),
            "s_per_epoch": numbers.get("s_per_epoch"), "s_per_eval": numbers.get("s_per_eval"),
        })
    return rows


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
    parts = ["python benchmarks/results.py", f"--dataset {args.dataset}", f"--models {','.join(args.models)}"]
    if args.config_files:
        parts.append(f"--config_files \"{' '.join(args.config_files)}\"")
    parts.append(f"--seeds {','.join(map(str, args.seeds))}")
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
    model = record.get("class", record["model"])
    return f'python run_recbole.py --model={model} --dataset={dataset} --config_files="{files}" {extra}'.strip()


def write_markdown(path, dataset, commands, records, models, rows, chart_name):
    """``commands``: [(command, environment)] of every results.py run whose records are in the table."""
    first_ok = next((r for r in records if r["status"] == "ok" and r["settings"]), None)
    lines = [f"# Results on `{dataset}`", ""]
    for i, (command, e) in enumerate(commands):
        lines.append(("Made by" if i == 0 else "and") + f" `{command}` (started {e['date']}) — {e['device']}, "
                     f"Python {e['python']}, torch {e['torch']}, RecBole {e['recbole']}, commit `{e['commit']}`"
                     + ("." if i == len(commands) - 1 else ""))
    lines.append("")
    if first_ok:
        s = first_ok["settings"]
        ev = s.get("eval_args") or {}
        lines.append(
            "**Protocol** (`baseline/common_protocol.yaml`): split `{}`, order `{}`, grouped by `{}`, "
            "ranking mode `{}` "
            "(full = all items), user/item filters `{}` / `{}`; test metrics at the epoch with the best "
            "validation `{}` (early stopping after `{}` epochs without improvement).".format(
                ev.get("split"), ev.get("order"), ev.get("group_by"), ev.get("mode"),
                s.get("user_inter_num_interval"), s.get("item_inter_num_interval"), s.get("valid_metric"),
                s.get("stopping_step")))
        lines.append("")
    seed_list = sorted({r["seed"] for r in records if r.get("seed") is not None})
    seeds = ", ".join(map(str, seed_list))
    lines.append(f"Seeds: {seeds}" + (" — cells are mean ± std (ddof=1) over the seeds that finished." if len(seed_list) > 1 else "."))
    lines.append("`s/epoch` = training time per epoch, `s/eval` = one validation pass (full ranking), "
                 "`epochs` = epochs trained (best epoch in brackets, counting from 0).")
    lines.append("")
    header = ["Model"] + [METRIC_LABELS[m] for m in METRICS] + ["valid", "params", "epochs", "s/epoch", "s/eval"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    best = {m: max((r[m][0] for r in rows if r[m][0] is not None), default=None) for m in METRICS}
    for row in rows:
        if row["n_ok"] == 0:
            err = "; ".join(row["errors"]).replace("|", "\\|")
            lines.append(f"| {row['model']} | **failed**: {err} |" + " |" * (len(header) - 2))
            continue
        cells = [row["model"]]
        for m in METRICS:
            cell = _fmt(row[m])
            cells.append(f"**{cell}**" if best[m] is not None and row[m][0] == best[m] and len(rows) > 1 else cell)
        epochs = _fmt_int(row["epochs"]) + ("†" if row["capped"] else "") \
            + (f" ({_fmt_int(row['best_epoch'])})" if row["best_epoch"][0] is not None else "")
        cells += [_fmt(row["valid"]), _fmt_int(row["params"]), epochs, _fmt(row["s_per_epoch"], 2), _fmt(row["s_per_eval"], 2)]
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
    if chart_name:
        lines += [f"![test metrics on {dataset}]({chart_name})", ""]
    lines += ["## Exact settings", ""]
    for model in models:
        rec = next((r for r in records if r["model"] == model and r["settings"]), None)
        lines.append(f"### {model}")
        lines.append("")
        rec_any = next(r for r in records if r["model"] == model)
        lines += ["```", _run_command(rec_any, dataset), "```", ""]
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


def plot(path, dataset, rows):
    """Grouped bar chart of the test metrics (error bars = std over seeds); False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("results.py: matplotlib is not installed - skipping the bar chart "
              "(install it with `pip install -e \".[plot]\"` or `pip install matplotlib`).", file=sys.stderr)
        return False
    rows = [r for r in rows if r["n_ok"] > 0]
    if not rows:
        return False
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(METRICS) + 0.3 * len(rows)), 4.0))
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(METRICS))]
        means = [row[m][0] or 0.0 for m in METRICS]
        errs = [row[m][1] or 0.0 for m in METRICS]
        ax.bar(xs, means, width, yerr=errs if any(errs) else None, capsize=2, label=row["model"])
    ax.set_xticks(range(len(METRICS)))
    ax.set_xticklabels([METRIC_LABELS[m] for m in METRICS])
    ax.set_ylabel("test score")
    ax.set_title(f"{dataset}: test metrics (full ranking, leave-one-out)")
    # below the axes: inside, the legend hides the tallest bars (Hit@20)
    ax.legend(fontsize="small", ncol=min(5, len(rows)), loc="upper center", bbox_to_anchor=(0.5, -0.1),
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
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


def _previous_table(json_path, new_models, new_commands):
    """Records, commands and model order of an earlier table, minus the models being run again."""
    try:
        with open(json_path, encoding="utf-8") as f:
            saved = json.load(f)
        old_records = saved["records"]
        old_commands = [(c["command"], c["environment"]) for c in saved["commands"]] if "commands" in saved \
            else [(saved["command"], saved["environment"])]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"results.py: --append cannot read the earlier table {json_path} ({err}); "
                         f"fix or move that file, or run without --append to replace it") from err
    kept = [r for r in old_records if r["model"] not in new_models and r.get("stage_of") not in new_models]
    models = list(dict.fromkeys(r["model"] for r in kept)) + list(new_models)
    commands = [c for c in old_commands
                if any(r.get("made_by", c[0]) == c[0] for r in kept)] + new_commands
    return kept, commands, models


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
            records, commands, models = _previous_table(json_path, [], [])
            models = sorted(models, key=lambda m: _order_key(m, args.models, models))
            _write_outputs(args, json_path, records, commands, models)
        return records
    if args.append and os.path.isfile(json_path):
        _previous_table(json_path, args.models, [])  # an unreadable table fails now, before hours of training
    env = _environment()  # now: the commit whose code this process runs, the date its runs started
    ckpt_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="timeplug_results_")
    records = []
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
                print(f"results.py: {label} (seed {seed}) on {args.dataset} ...", flush=True)
                record = run_one(model, args.dataset, files, config_dict, label=label)
                records.append(record)
                records += stage_records(record)
                if record["status"] == "ok":
                    t = record["test"]
                    print(f"results.py: {label} seed {seed}: test ndcg@10={t.get('ndcg@10'):.4f} "
                          f"hit@10={t.get('hit@10'):.4f}, {record['epochs']} epochs, "
                          f"{record['s_per_epoch']:.2f} s/epoch", flush=True)
                else:
                    print(f"results.py: {label} seed {seed} FAILED: {record['error']}", flush=True)
    finally:
        if args.checkpoint_dir is None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    commands = [(_command(args), env)]
    for record in records:
        record["made_by"] = commands[0][0]
    new_records = records
    with _locked(args.out):  # parallel --append runs on one table take turns here
        models = list(dict.fromkeys(r["model"] for r in records))  # the models asked for + their stage rows
        if args.append and os.path.isfile(json_path):
            kept, commands, models = _previous_table(json_path, models, commands)
            records = kept + records
        _write_outputs(args, json_path, records, commands, models)
    return new_records


def _order_key(model, wanted, models):
    """Rows in --models order (a stage row right after its model), the others after them as they were."""
    base = model.split(" · ")[0]
    if base in wanted:
        return (0, wanted.index(base), model != base)
    return (1, models.index(model), False)


def _write_outputs(args, json_path, records, commands, models):
    rows = aggregate(records, models)
    chart = f"{args.dataset}.png"
    drew = False if args.no_plot else plot(os.path.join(args.out, chart), args.dataset, rows)
    md_path = os.path.join(args.out, f"{args.dataset}.md")
    write_markdown(md_path, args.dataset, commands, records, models, rows, chart if drew else None)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"commands": [{"command": c, "environment": e} for c, e in commands], "records": records},
                  f, indent=1, default=str)
    print(f"results.py: wrote {md_path}" + (f" and {os.path.join(args.out, chart)}" if drew else ""))


if __name__ == "__main__":
    main()
