"""Training-step time of MASAN relative to RecBole's LightSANs, for each alpha-entmax path, in one run.

    python benchmarks/masan_speed.py                      # CPU: batch 128, L 50, d 64, 2 layers, k 20
    python benchmarks/masan_speed.py --device cuda --batch_size 1024 --seq_len 150

One training step = forward + CE loss over all items + backward + Adam step, on a synthetic right-padded
batch (lengths uniform in 1..L).  The models are timed interleaved (one step each, round after round) so
that load changes on a shared machine hit them alike; the median per model is reported with its ratio
to LightSANs.  Rows: MASAN with softmax (= LightSANs plus the padding mask; checks the harness), the
adaptive-alpha paths newton (default: at most 10 steps, early exit at ``entmax_newton_tol`` 1e-6), newton at
exactly 10 steps (``entmax_newton_tol: 0``), bisect at 25 and at 50 steps (the entmax package default), and
fixed alpha 1.5 with the exact sort-based entmax15.  On CUDA the peak allocated memory per model is
printed too (torch.cuda.max_memory_allocated); on CPU only time.
"""

import argparse
import statistics
import sys
import time

import torch

import recbole_timeplug  # noqa: F401  (compat fixes)
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.lightsans import LightSANs
from recbole_timeplug.config import Config
from recbole_timeplug.model.sequential_recommender.masan import MASAN
from recbole_timeplug.testing import ItemCountDataset


VARIANTS = [
    ("LightSANs (RecBole)", "LightSANs", {}),
    ("MASAN softmax", "MASAN", {"alpha_mode": "softmax"}),
    ("MASAN adaptive, newton <=10, tol 1e-6", "MASAN", {"entmax_impl": "newton", "entmax_newton_iter": 10}),
    ("MASAN adaptive, newton 10 (tol 0)", "MASAN",
     {"entmax_impl": "newton", "entmax_newton_iter": 10, "entmax_newton_tol": 0.0}),
    ("MASAN adaptive, bisect 25", "MASAN", {"entmax_impl": "bisect", "entmax_n_iter": 25}),
    ("MASAN adaptive, bisect 50", "MASAN", {"entmax_impl": "bisect", "entmax_n_iter": 50}),
    ("MASAN fixed 1.5, sort (entmax15)", "MASAN", {"alpha_mode": "fixed", "entmax_alpha": 1.5, "entmax_impl": "sort"}),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=128)
    parser.add_argument("--seq_len", "--seq-len", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--n_items", "--n-items", type=int, default=1700)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from argv
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, args.seq_len + 1, (args.batch_size,), generator=g)
    seq = torch.randint(1, args.n_items, (args.batch_size, args.seq_len), generator=g)
    seq[torch.arange(args.seq_len).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    batch = Interaction(
        {"item_id_list": seq, "item_length": lengths, "item_id": torch.randint(1, args.n_items, (args.batch_size,), generator=g)}
    ).to(device)

    common = {
        "hidden_size": args.hidden,
        "inner_size": 4 * args.hidden,
        "n_layers": args.layers,
        "n_heads": 2,
        "k_interests": args.k,
        "MAX_ITEM_LIST_LENGTH": args.seq_len,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "device": str(device),
    }
    runs = []
    for label, name, extra in VARIANTS:
        torch.manual_seed(0)
        config = Config(model=name, dataset="ml-100k", config_dict={**common, **extra})
        model = (LightSANs if name == "LightSANs" else MASAN)(config, ItemCountDataset(args.n_items)).to(device).train()
        runs.append({"label": label, "model": model, "opt": torch.optim.Adam(model.parameters(), lr=1e-3), "times": []})

    def step(run):
        run["opt"].zero_grad(set_to_none=True)
        loss = run["model"].calculate_loss(batch)
        loss.backward()
        run["opt"].step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    peak = {}
    for run in runs:  # warm-up (and peak memory, one model at a time)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            step(run)
        if device.type == "cuda":
            peak[run["label"]] = torch.cuda.max_memory_allocated() / 2**20
    for _ in range(args.steps):
        for run in runs:
            start = time.perf_counter()
            step(run)
            run["times"].append(time.perf_counter() - start)

    base = statistics.median(runs[0]["times"])
    print(
        f"device={device} batch={args.batch_size} L={args.seq_len} d={args.hidden} layers={args.layers} "
        f"k={args.k} items={args.n_items} steps={args.steps} threads={torch.get_num_threads()}"
    )
    header = f"{'model':40s} {'ms/step (median)':>17s} {'ratio vs LightSANs':>19s}"
    print(header + ("  peak MiB" if peak else ""))
    for run in runs:
        t = statistics.median(run["times"])
        line = f"{run['label']:40s} {1000 * t:17.1f} {t / base:19.2f}"
        if peak:
            line += f"  {peak[run['label']]:8.1f}"
        print(line)


if __name__ == "__main__":
    main()
