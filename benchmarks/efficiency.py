"""Training-step time, full-sort evaluation throughput and peak memory vs sequence length, as ratios to SASRec.

    python benchmarks/efficiency.py --models SASRec,GRU4Rec,TiSASRec,TiM4Rec,MASAN,TiMiRec,ARERec \
        --lengths 50,200,500,1000 --batch_size 256 --hidden_size 64 --out results/

All models are measured in this one process, on the same synthetic batches, next to SASRec (always
included) at every L, so the ratios do not depend on the machine's load at another time.

* Data: ``benchmarks/synthetic.py`` writes an ML-1M-shaped dataset (``--n_users/--n_items/--n_interactions``;
  default 6,040 / 3,706 / 1,000,209) that RecBole loads once; models are built on it (item vocabulary,
  fields). Batches are synthetic and full-length (every sequence has L items, drawn by item popularity,
  with increasing timestamps), so the cost at L is the cost of an L-long history. A model whose
  constructor needs RecBole's augmented training set (ARERec, FEARec) is built on it instead
  (``data_preparation`` at that L; memory ~ rows x L x 12 bytes), as ``run_recbole`` would.
* Training step: ``calculate_loss`` + backward + Adam step (lr 1e-3; a model's own ``build_optimizer`` when it
  has one, e.g. ARERec's ``adam_variant``) on one batch of ``--batch_size`` sequences
  (after the batch transform the model's config names, e.g. BERT4Rec's masking); median over ``--steps``
  timed steps after ``--warmup``. All models of one L are built first and their timed steps interleaved
  (one step of each model per round), so the ratios hold when the machine's load changes during the run.
* Evaluation: ``full_sort_predict`` (scores for all items) under ``torch.no_grad``; users/s over
  ``--eval_batches`` batches of ``--eval_batch_size`` users.
* Peak memory of one training step, above what was allocated when the step started (parameters,
  optimizer state and the batch are not counted): CUDA ``torch.cuda.max_memory_allocated``; CPU the peak
  of the running sum of tensor allocations minus frees that ``torch.profiler(profile_memory=True)``
  records per operator during the step (operator granularity: an operator's internal scratch memory is
  not seen).

Writes ``<out>/efficiency.md`` (+ ``efficiency.json``, and ``efficiency.png``: log-log training time vs L,
needs matplotlib; ``--render --out <out>`` redraws md and plot from the JSON without measuring). Failures (out of memory, missing fields, ...) appear in the table, never abort the run.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="SASRec,GRU4Rec,TiSASRec,TiM4Rec,MASAN,TiMiRec,ARERec")
    p.add_argument("--lengths", default="50,200,500,1000", help="sequence lengths L")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--hidden_size", type=int, default=64, help="d: sets hidden_size and embedding_size")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per (model, L)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--eval_batches", type=int, default=5)
    p.add_argument("--eval_batch_size", type=int, default=256)
    p.add_argument("--n_users", type=int, default=6040)
    p.add_argument("--n_items", type=int, default=3706)
    p.add_argument("--n_interactions", type=int, default=1_000_209)
    p.add_argument("--data_path", default=None, help="where the synthetic dataset goes (default: a temp folder)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[Model:]KEY=VALUE",
                   help="config override (YAML value) for all models or one model; repeatable")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--out", default="results")
    p.add_argument("--no_plot", action="store_true")
    p.add_argument("--render", action="store_true",
                   help="measure nothing: re-write <out>/efficiency.md and the plot from <out>/efficiency.json "
                        "(e.g. after installing matplotlib)")
    a = p.parse_args(argv)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    if "SASRec" in a.models:
        a.models.remove("SASRec")
    a.models = ["SASRec"] + a.models  # the reference, measured first at every L
    try:
        a.lengths = sorted({int(x) for x in a.lengths.split(",") if x.strip()})
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {a.lengths!r}")
    for key in ("batch_size", "hidden_size", "steps", "eval_batches", "eval_batch_size"):
        if getattr(a, key) < 1:
            p.error(f"--{key} must be >= 1")
    if not a.lengths or min(a.lengths) < 2:
        p.error("--lengths must be integers >= 2")
    try:
        from benchmarks.results import _parse_overrides  # imported as a package module (tests)
    except ImportError:
        from results import _parse_overrides  # run as a script: benchmarks/ is sys.path[0]

    a.global_set, a.model_set = _parse_overrides(p, a.overrides)
    return a


# ------------------------------------------------------------------------------------ setup
def build_dataset(args, device):
    """The synthetic dataset (written by synthetic.py) loaded once through RecBole."""
    try:
        from benchmarks import synthetic  # imported as a package module (tests)
    except ImportError:
        import synthetic  # run as a script: benchmarks/ is sys.path[0]
    from recbole.data import create_dataset

    from recbole_timeplug.config import Config

    data_path = args.data_path or tempfile.mkdtemp(prefix="timeplug_eff_")
    name = f"syn-u{args.n_users}-i{args.n_items}-n{args.n_interactions}-s{args.seed}"
    if not os.path.isfile(os.path.join(data_path, name, f"{name}.inter")):
        users, items, times = synthetic.generate(args.n_users, args.n_items, args.n_interactions, seed=args.seed)
        synthetic.write(data_path, name, users, items, times)
    config = Config(model="SASRec", dataset=name, config_dict=_base_config(args, data_path, name, device, 50))
    return create_dataset(config), data_path, name


def _base_config(args, data_path, name, device, length):
    return {
        "data_path": data_path, "dataset": name, "device": device, "use_gpu": device.startswith("cuda"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "state": "ERROR", "log_wandb": False,
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": length, "hidden_size": args.hidden_size, "embedding_size": args.hidden_size,
        "train_batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size, "seed": args.seed,
        "show_progress": False,
    }


def make_batch(config, dataset, n, length, gen, device, with_neg):
    """A full-length synthetic batch in RecBole's layout (keys named by the config)."""
    import torch
    from recbole.data.interaction import Interaction

    n_items = dataset.item_num
    n_users = dataset.user_num
    seq = torch.randint(1, n_items, (n, length), generator=gen)
    gaps = torch.randint(0, 86_400, (n, length + 1), generator=gen).double()
    times = 9.8e8 + torch.cumsum(gaps, dim=1)
    suffix = config["LIST_SUFFIX"]
    data = {
        config["USER_ID_FIELD"]: torch.randint(1, n_users, (n,), generator=gen),
        config["ITEM_ID_FIELD"] + suffix: seq,
        config["ITEM_LIST_LENGTH_FIELD"]: torch.full((n,), length, dtype=torch.long),
        config["ITEM_ID_FIELD"]: torch.randint(1, n_items, (n,), generator=gen),
    }
    if config["TIME_FIELD"]:
        data[config["TIME_FIELD"] + suffix] = times[:, :length].float()
        data[config["TIME_FIELD"]] = times[:, length].float()
    if with_neg:
        data[config["NEG_PREFIX"] + config["ITEM_ID_FIELD"]] = torch.randint(1, n_items, (n,), generator=gen)
    return Interaction(data)


def _uses_negatives(config):
    args = config["train_neg_sample_args"]
    return bool(args) and args.get("distribution", "none") not in (None, "none")


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _loss(model, batch):
    loss = model.calculate_loss(batch)
    return sum(loss) if isinstance(loss, tuple) else loss


# ------------------------------------------------------------------------------------ measurements
def train_step_memory(model, optimizer, batch, device):
    """Peak bytes allocated during one training step above the step's starting allocation."""
    import torch

    if device.startswith("cuda"):
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(model, optimizer, batch)
        _sync(device)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, optimizer, batch)
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def _step(model, optimizer, batch):
    optimizer.zero_grad(set_to_none=True)
    loss = _loss(model, batch)
    loss.backward()
    optimizer.step()


def augmented_train_set(config, length, cache):
    """RecBole's augmented training dataset at MAX_ITEM_LIST_LENGTH = ``length`` (cached per L)."""
    if cache.get("L") != length:
        from recbole.data import create_dataset, data_preparation

        cache.clear()
        train_data, _, _ = data_preparation(config, create_dataset(config))
        cache.update(L=length, train=train_data._dataset)
    return cache["train"]


class Cell:
    """One (model, L) measurement in progress: its result ``row`` and, while it is live, what it needs."""

    def __init__(self, model_name, length):
        self.row = {"model": model_name, "L": length}
        self.model = self.optimizer = self.config = self.train_batch = self.gen = None
        self.times = []

    @property
    def live(self):
        return "error" not in self.row and self.model is not None

    def fail(self, err):
        if "out of memory" in str(err).lower():
            self.row["error"] = "out of memory"
        else:
            traceback.print_exc()
            lines = str(err).strip().splitlines()
            self.row["error"] = f"{type(err).__name__}: {lines[0] if lines else ''}"[:200]
        self.release()

    def release(self):
        self.model = self.optimizer = self.train_batch = None
        gc.collect()


def prepare(model_name, length, args, dataset, data_path, name, device, cache):
    """Build the model, its optimizer and its training batch, and run the warm-up steps."""
    import torch
    from recbole.data.transform import construct_transform
    from recbole.utils import init_seed

    from recbole_timeplug.config import Config
    from recbole_timeplug.registry import get_model

    cell = Cell(model_name, length)
    try:
        config_dict = _base_config(args, data_path, name, device, length)
        config_dict.update(args.global_set)
        config_dict.update(args.model_set.get(model_name, {}))
        config = Config(model=model_name, dataset=name, config_dict=config_dict)
        # The transform first: its constructor writes config keys the model reads (BERT4Rec's MASK_ITEM_SEQ),
        # as RecBole's dataloaders are built before the model.
        transform = construct_transform(config)
        model_class = get_model(model_name)
        init_seed(args.seed, True)
        try:
            model = model_class(config, dataset)
        except Exception as err:  # noqa: BLE001 - retried below on what RecBole would pass
            # Some models (ARERec, FEARec) read RecBole's *augmented* training set in __init__ (item_id_list
            # rows): build it as run_recbole does (data_preparation) at this L, and retry once.
            print(f"efficiency.py: {model_name} needs the augmented training set ({type(err).__name__}: "
                  f"{str(err)[:120]}); building it for L={length}", flush=True)
            init_seed(args.seed, True)
            model = model_class(config, augmented_train_set(config, length, cache))
            cell.row["built_on"] = "augmented training set"
        cell.model = model = model.to(device)
        cell.config = config
        cell.row["params"] = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
        # a model that builds its own optimizer (ARERec's `adam_variant`) gets it, as its trainer would
        cell.optimizer = (model.build_optimizer(1e-3) if hasattr(model, "build_optimizer")
                          else torch.optim.Adam(model.parameters(), lr=1e-3))
        cell.gen = torch.Generator().manual_seed(args.seed + length)
        batch = make_batch(config, dataset, args.batch_size, length, cell.gen, "cpu", _uses_negatives(config))
        cell.train_batch = transform(dataset, batch).to(device)
        model.train()
        for _ in range(args.warmup):
            _step(model, cell.optimizer, cell.train_batch)
    except Exception as err:  # noqa: BLE001 - one failing cell must not abort the benchmark
        cell.fail(err)
    return cell


def timed_step(cell, device):
    """Time one training step of a live cell (a failure ends the cell, not the benchmark)."""
    try:
        _sync(device)
        start = time.perf_counter()
        _step(cell.model, cell.optimizer, cell.train_batch)
        _sync(device)
        cell.times.append(time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001
        cell.fail(err)


def finish(cell, args, dataset, device):
    """The median step time, the step's peak memory and the evaluation throughput; frees the model."""
    import torch

    if not cell.live:
        return cell.row
    row, model = cell.row, cell.model
    try:
        row["train_ms"] = 1000 * statistics.median(cell.times)
        row["peak_mb"] = train_step_memory(model, cell.optimizer, cell.train_batch, device) / 2**20
        model.eval()
        eval_batches = [make_batch(cell.config, dataset, args.eval_batch_size, row["L"], cell.gen, "cpu", False)
                        .to(device) for _ in range(args.eval_batches)]
        with torch.no_grad():
            model.full_sort_predict(eval_batches[0])  # warm-up
            _sync(device)
            start = time.perf_counter()
            for batch in eval_batches:
                scores = model.full_sort_predict(batch)
            _sync(device)
            elapsed = time.perf_counter() - start
        expected = args.eval_batch_size * dataset.item_num
        if scores.numel() != expected:
            raise RuntimeError(f"full_sort_predict returned {tuple(scores.shape)} scores, expected "
                               f"{args.eval_batch_size} x {dataset.item_num}")
        row["eval_users_s"] = args.eval_batches * args.eval_batch_size / elapsed
    except Exception as err:  # noqa: BLE001
        cell.fail(err)
    cell.release()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def measure_length(models, length, args, dataset, data_path, name, device, cache=None):
    """Every model's cell at one L. The timed steps are interleaved: round r steps each live model once,
    starting one model further along each round, so a change in the machine's load (another job starting,
    frequency scaling) falls on every model alike instead of on whichever model was being timed."""
    cache = {} if cache is None else cache
    cells = [prepare(m, length, args, dataset, data_path, name, device, cache) for m in models]
    for r in range(args.steps):
        live = [c for c in cells if c.live]
        for cell in live[r % len(live):] + live[:r % len(live)] if live else ():
            timed_step(cell, device)
    return [finish(cell, args, dataset, device) for cell in cells]


# ------------------------------------------------------------------------------------ report
def add_ratios(rows):
    ref = {r["L"]: r for r in rows if r["model"] == "SASRec" and "error" not in r}
    for r in rows:
        base = ref.get(r["L"])
        if base is None or "error" in r:
            continue
        r["train_x"] = r["train_ms"] / base["train_ms"]
        r["eval_x"] = r["eval_users_s"] / base["eval_users_s"]
        r["mem_x"] = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else None
    return rows


def _x(v):
    return "–" if v is None else f"{v:.2f}×"


def write_markdown(path, args, rows, env, chart):
    mem_how = ("`torch.cuda.max_memory_allocated` minus the allocation at the step's start"
               if env["device_kind"] == "cuda" else
               "CPU: peak running sum of tensor allocations − frees recorded by `torch.profiler` "
               "(operator granularity), above the step's start")
    lines = [
        "# Efficiency vs sequence length",
        "",
        f"Made by `python benchmarks/efficiency.py {' '.join(env['argv'])}` on {env['date']} — {env['device']}, "
        f"Python {env['python']}, torch {env['torch']}.",
        "",
        f"B = {args.batch_size} (training), d = {args.hidden_size}, {args.steps} timed steps (median) after "
        f"{args.warmup} warm-up; evaluation = full-sort over {env['n_items']:,} items, {args.eval_batches} × "
        f"{args.eval_batch_size} users. Synthetic ML-1M-shaped dataset ({args.n_users:,} users, {args.n_items:,} "
        f"items, {args.n_interactions:,} interactions), full-length sequences. Each model with its own default "
        f"hyperparameters (d set as above). Peak memory = {mem_how}. "
        "Ratios are to SASRec at the same L, measured in the same process (time: >1 is slower; users/s: "
        ">1 is faster).",
        "",
        "| L | Model | params | train ms/step | × SASRec | eval users/s | × SASRec | peak MB | × SASRec |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            params = f"{r['params']:,}" if "params" in r else "–"
            lines.append(f"| {r['L']} | {r['model']} | {params} | "
                         f"**failed**: {r['error'].replace('|', '/')} | | | | | |")
            continue
        lines.append(
            f"| {r['L']} | {r['model']} | {r['params']:,} | {r['train_ms']:.1f} | {_x(r.get('train_x'))} | "
            f"{r['eval_users_s']:,.0f} | {_x(r.get('eval_x'))} | {r['peak_mb']:.1f} | {_x(r.get('mem_x'))} |")
    lines.append("")
    if chart:
        lines += [f"![training step time vs L]({chart})", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def plot(path, rows):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("efficiency.py: matplotlib is not installed - skipping the plot "
              "(install it with `pip install -e \".[plot]\"` or `pip install matplotlib`).", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["L"], r["train_ms"]) for r in rows if r["model"] == model and "error" not in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=model)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("training step time (ms)")
    ax.set_title("training step time vs L")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def render(out):
    """Re-write ``<out>/efficiency.md`` and its plot from ``<out>/efficiency.json`` (the rows and the command
    that measured them); returns the rows."""
    with open(os.path.join(out, "efficiency.json"), encoding="utf-8") as f:
        data = json.load(f)
    env, rows = data["environment"], data["rows"]
    drew = plot(os.path.join(out, "efficiency.png"), rows)
    write_markdown(os.path.join(out, "efficiency.md"), parse_args(env["argv"]), rows, env,
                   "efficiency.png" if drew else None)
    print(f"efficiency.py: rendered {os.path.join(out, 'efficiency.md')} from its JSON")
    return rows


def main(argv=None):
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render:
        return render(args.out)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    import torch

    import recbole_timeplug  # noqa: F401  (compat fixes, registry)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads and device == "cpu":
        torch.set_num_threads(args.threads)
    dataset, data_path, name = build_dataset(args, device)
    rows, cache = [], {}
    for length in args.lengths:
        for row in measure_length(args.models, length, args, dataset, data_path, name, device, cache):
            rows.append(row)
            model = row["model"]
            if "error" in row:
                print(f"efficiency.py: L={length} {model}: FAILED {row['error']}", flush=True)
            else:
                print(f"efficiency.py: L={length} {model}: {row['train_ms']:.1f} ms/step, "
                      f"{row['eval_users_s']:.0f} users/s, peak {row['peak_mb']:.1f} MB", flush=True)
    add_ratios(rows)
    env = {
        "argv": raw_argv,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else
        f"CPU ({torch.get_num_threads()} threads, {os.cpu_count()} cores)",
        "device_kind": "cuda" if device.startswith("cuda") else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "n_items": dataset.item_num - 1,
    }
    os.makedirs(args.out, exist_ok=True)
    drew = False if args.no_plot else plot(os.path.join(args.out, "efficiency.png"), rows)
    write_markdown(os.path.join(args.out, "efficiency.md"), args, rows, env, "efficiency.png" if drew else None)
    with open(os.path.join(args.out, "efficiency.json"), "w", encoding="utf-8") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    print(f"efficiency.py: wrote {os.path.join(args.out, 'efficiency.md')}")
    return rows


if __name__ == "__main__":
    main()
