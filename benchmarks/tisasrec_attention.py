"""Training-step time and peak memory: TiSASRec (bucketed attention) vs the naive reference vs RecBole's SASRec.

One full training step (forward, CE over all items, backward, Adam step) on random right-padded batches,
for each sequence length, all three models measured in the same run; printed as absolute numbers and as
ratios. "naive" is TiSASRec with ``interval_dropout: pair``, i.e. the official formulation that builds
the B x L x L x d interval tensors (per-pair dropout) during training.

    python benchmarks/tisasrec_attention.py                         # B=256, L in {50, 200, 500}, d=64
    python benchmarks/tisasrec_attention.py --batch_size 32 --lengths 50 200

``--interleaved``: time only, all in this process, one training step per model round after round (load
changes on a shared machine hit the models alike): TiSASRec with ``interval_mask`` used and table, and
SASRec; medians and ratios to SASRec. E.g. on a shared CPU:

    python benchmarks/tisasrec_attention.py --interleaved --device cpu --threads 1 --batch_size 16 --lengths 50 1000

``--defaults`` (with ``--interleaved``): each model with its own YAML defaults (SASRec: RecBole's, 2 heads and
dropout 0.5; TiSASRec: ``properties/model/TiSASRec.yaml``) and full-length batches with gaps of up to a day,
as ``benchmarks/efficiency.py`` builds them; otherwise the shared sizes above and ``_batch``'s data.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the steps; on CPU the growth of the
process's peak resident set (``resource.getrusage``) from the first step on (baseline: model, optimizer
and batches built), each configuration measured in a
fresh subprocess so that peaks do not mask each other. Naive runs whose interval tensors alone would
exceed ``--naive_max_gb`` are skipped (reported as such), as are out-of-memory failures.
"""

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _build(kind, length, args, device, interval_mask=None):
    import recbole_timeplug  # noqa: F401  (compat fixes)
    from recbole.model.sequential_recommender.sasrec import SASRec

    from recbole_timeplug.model.sequential_recommender.tisasrec import TiSASRec
    from recbole_timeplug.testing import ItemCountDataset, standalone_config

    config = standalone_config(
        MAX_ITEM_LIST_LENGTH=length, device=device,
        hidden_size=args.hidden_size, n_layers=args.n_layers, n_heads=args.n_heads, loss_type="CE",
        train_neg_sample_args={"distribution": "none", "sample_num": "none"},
        # TiSASRec
        dropout_prob=0.2, time_span=args.time_span, time_scale="user_min_history", time_unit=1.0,
        interval_dropout="pair" if kind == "naive" else "bucket", interval_mask=interval_mask or args.interval_mask,
        layer_norm_eps=1e-8,
        initializer="xavier_uniform", initializer_range=0.02, l2_emb=0.0,
        # SASRec (RecBole defaults apart from the shared sizes)
        inner_size=4 * args.hidden_size, hidden_dropout_prob=0.2, attn_dropout_prob=0.2, hidden_act="gelu",
    )
    if kind == "sasrec":
        config["layer_norm_eps"] = 1e-12
        return SASRec(config, ItemCountDataset(args.n_items)).to(device)
    return TiSASRec(config, ItemCountDataset(args.n_items)).to(device)


def _batch(length, args, device, seed):
    g = torch.Generator().manual_seed(seed)
    b = args.batch_size
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    lengths[0] = length  # at least one full row
    real = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    items = torch.randint(1, args.n_items, (b, length), generator=g).masked_fill(~real, 0)
    gaps = torch.randint(0, 4000, (b, length), generator=g).double()
    times = (1.0e9 + torch.cumsum(gaps, 1)).float().masked_fill(~real, 0.0)
    return {
        "item_id_list": items.to(device),
        "item_length": lengths.to(device),
        "timestamp_list": times.to(device),
        "item_id": torch.randint(1, args.n_items, (b,), generator=g).to(device),
    }


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(kind, length, args, device, queue):
    try:
        torch.manual_seed(0)
        model = _build(kind, length, args, device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [_batch(length, args, device, seed) for seed in range(2)]

        def step(i):
            optimizer.zero_grad(set_to_none=True)
            loss = model.calculate_loss(batches[i % 2])
            loss.backward()
            optimizer.step()

        # baselines before the first step: the peak of a training step is reached in the warm-up already
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for i in range(args.warmup):
            step(i)
        times = []
        for i in range(args.repeats):
            _sync(device)
            t0 = time.perf_counter()
            step(i)
            _sync(device)
            times.append(time.perf_counter() - t0)
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
        queue.put({"time_s": statistics.median(times), "peak_bytes": peak})
    except torch.cuda.OutOfMemoryError:
        queue.put({"skipped": "out of memory"})
    except RuntimeError as err:  # CPU allocation failures
        queue.put({"skipped": f"error: {str(err)[:80]}"})


def measure(kind, length, args, device):
    if kind == "naive":
        # R^K and R^V (B x L x L x d fp32 each), their dropout outputs and masks
        estimate = 4 * args.batch_size * length * length * args.hidden_size * 4 / 2**30
        if estimate > args.naive_max_gb:
            return {"skipped": f"needs ~{estimate:.1f} GiB > --naive_max_gb {args.naive_max_gb}"}
    if device == "cuda":  # one process; the CUDA peak counter is reset per measurement
        queue = _ListQueue()
        _measure(kind, length, args, device, queue)
        torch.cuda.empty_cache()
        return queue.items[0]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, length, args, device, queue))
    proc.start()
    proc.join()
    return queue.get() if not queue.empty() else {"skipped": f"process exit code {proc.exitcode}"}


class _ListQueue:
    def __init__(self):
        self.items = []

    def put(self, item):
        self.items.append(item)


def _fmt(res, key):
    if "skipped" in res:
        return "-"
    return f"{res['time_s'] * 1e3:.1f} ms" if key == "time_s" else f"{res['peak_bytes'] / 2**20:.0f} MiB"


def _ratio(a, b, key):
    if "skipped" in a or "skipped" in b or b[key] <= 0:
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def _build_defaults(kind, length, args, device, interval_mask=None):
    import recbole_timeplug  # noqa: F401  (compat fixes)
    from recbole.model.sequential_recommender.sasrec import SASRec

    from recbole_timeplug.config import Config
    from recbole_timeplug.model.sequential_recommender.tisasrec import TiSASRec
    from recbole_timeplug.testing import ItemCountDataset

    values = {"MAX_ITEM_LIST_LENGTH": length, "device": device, "train_neg_sample_args": None, "loss_type": "CE"}
    if kind == "sasrec":
        return SASRec(Config(model="SASRec", dataset="ml-100k", config_dict=values), ItemCountDataset(args.n_items))
    values["interval_mask"] = interval_mask or args.interval_mask
    return TiSASRec(Config(model="TiSASRec", dataset="ml-100k", config_dict=values), ItemCountDataset(args.n_items))


def _batch_full_length(length, args, device, seed):
    """efficiency.py's batches: every sequence L items long, increasing times, gaps uniform in 0..86399 s."""
    g = torch.Generator().manual_seed(seed)
    b = args.batch_size
    gaps = torch.randint(0, 86_400, (b, length + 1), generator=g).double()
    times = 9.8e8 + torch.cumsum(gaps, dim=1)
    return {
        "item_id_list": torch.randint(1, args.n_items, (b, length), generator=g).to(device),
        "item_length": torch.full((b,), length, dtype=torch.long).to(device),
        "timestamp_list": times[:, :length].float().to(device),
        "item_id": torch.randint(1, args.n_items, (b,), generator=g).to(device),
    }


def interleaved(args):
    """Median step time of TiSASRec (used / table interval masks) and SASRec, timed round-robin in-process."""
    device = args.device
    build, make_batch = (_build_defaults, _batch_full_length) if args.defaults else (_build, _batch)
    print(
        f"device={device} threads={torch.get_num_threads()} B={args.batch_size} d={args.hidden_size} "
        f"layers={args.n_layers} heads={args.n_heads} k={args.time_span} items={args.n_items}; "
        f"interleaved, median of {args.repeats} training steps"
        + ("; each model's own YAML defaults, full-length batches" if args.defaults else "")
    )
    print("| L | model | ms/step | x SASRec |")
    print("|---|---|---|---|")
    for length in args.lengths:
        runs = []
        for label, kind, mask in (("SASRec", "sasrec", None), ("TiSASRec used", "tisasrec", "used"),
                                  ("TiSASRec table", "tisasrec", "table")):
            torch.manual_seed(0)
            model = build(kind, length, args, device, mask).train()
            runs.append((label, model, torch.optim.Adam(model.parameters(), lr=1e-3), []))
        batches = [make_batch(length, args, device, seed) for seed in range(2)]

        def step(run, i):
            run[2].zero_grad(set_to_none=True)
            run[1].calculate_loss(batches[i % 2]).backward()
            run[2].step()

        for run in runs:
            for i in range(args.warmup):
                step(run, i)
        for i in range(args.repeats):
            for run in runs:
                _sync(device)
                t0 = time.perf_counter()
                step(run, i)
                _sync(device)
                run[3].append(time.perf_counter() - t0)
        base = statistics.median(runs[0][3])
        for label, _, _, times in runs:
            t = statistics.median(times)
            print(f"| {length} | {label} | {t * 1e3:.1f} | {t / base:.2f}x |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--n_layers", type=int, default=2)
    parser.add_argument("--n_heads", type=int, default=1)
    parser.add_argument("--time_span", type=int, default=256)
    parser.add_argument("--interval_mask", default="used", choices=("used", "table"),
                        help="TiSASRec's interval-dropout masks: used buckets only (default) or all k+1")
    parser.add_argument("--n_items", type=int, default=3707, help="item vocabulary (ML-1M: 3706 + PAD)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--naive_max_gb", type=float, default=None,
                        help="skip naive runs needing more (default: 90%% of GPU memory, 6 GiB on CPU)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--interleaved", action="store_true",
                        help="time only, in this process, models alternating step by step (see module doc)")
    parser.add_argument("--defaults", action="store_true",
                        help="with --interleaved: each model's own YAML defaults, full-length batches (see module doc)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.interleaved:
        sys.argv = sys.argv[:1]  # RecBole's Config (--defaults) reads --key=value from argv
        interleaved(args)
        return
    if args.naive_max_gb is None:
        args.naive_max_gb = (
            0.9 * torch.cuda.get_device_properties(0).total_memory / 2**30 if args.device == "cuda" else 6.0
        )
    memory_how = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "growth of peak RSS (getrusage)"
    print(
        f"device={args.device} threads={torch.get_num_threads()} B={args.batch_size} d={args.hidden_size} "
        f"layers={args.n_layers} heads={args.n_heads} k={args.time_span} items={args.n_items}; "
        f"median of {args.repeats} training steps; memory: {memory_how}"
    )
    rows, results = [], {}
    for length in args.lengths:
        res = {kind: measure(kind, length, args, args.device) for kind in ("tisasrec", "naive", "sasrec")}
        results[length] = res
        rows.append(
            [
                str(length),
                _fmt(res["tisasrec"], "time_s"), _fmt(res["naive"], "time_s"), _fmt(res["sasrec"], "time_s"),
                _ratio(res["tisasrec"], res["sasrec"], "time_s"), _ratio(res["naive"], res["tisasrec"], "time_s"),
                _fmt(res["tisasrec"], "peak_bytes"), _fmt(res["naive"], "peak_bytes"), _fmt(res["sasrec"], "peak_bytes"),
                _ratio(res["tisasrec"], res["sasrec"], "peak_bytes"), _ratio(res["naive"], res["tisasrec"], "peak_bytes"),
            ]
        )
        for kind, r in res.items():
            if "skipped" in r:
                print(f"L={length} {kind}: skipped ({r['skipped']})")
    header = [
        "L", "time TiSASRec", "time naive", "time SASRec", "TiSASRec/SASRec", "naive/TiSASRec",
        "peak TiSASRec", "peak naive", "peak SASRec", "TiSASRec/SASRec", "naive/TiSASRec",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
