"""Training-step time with ``torch.set_num_threads(1)`` vs ``2``, alternating step by step in one process.

    python benchmarks/threads.py
    python benchmarks/threads.py --models TiM4Rec,SASRec --shapes 1024x20,16x50 --steps 20
    python benchmarks/threads.py --threads 1,2,4 --models SASRec --shapes 1024x20

For each model and shape (B x L) the model is built from its shipped YAML defaults at ``--hidden_size`` and
stepped (``calculate_loss`` + backward + Adam, as in ``step_ratio.py``, on its synthetic batch) with each
thread count in turn, so that a load change on a shared machine hits every thread count alike. Printed:
the median step time per thread count and its ratio to the first (``t(n) / t(1)`` < 1: more threads help).
The thread counts are set with ``torch.set_num_threads``, whatever ``OMP_NUM_THREADS`` says; a count above
the free cores measures contention, not speed.
"""

import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_ratio import Stepper, build, make_batch  # noqa: E402


def main():
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="TiM4Rec,SASRec")
    p.add_argument("--shapes", default="1024x20,16x50", help="BxL,BxL,...")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--n_items", type=int, default=1700)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    counts = [int(n) for n in args.threads.split(",")]

    import recbole_timeplug  # noqa: F401  (compat fixes: anomaly mode off)

    print(f"cores: {os.cpu_count()}, threads compared: {counts} (torch.set_num_threads)")
    for shape in args.shapes.split(","):
        B, L = (int(v) for v in shape.lower().split("x"))
        for name in args.models.split(","):
            cfg = SimpleNamespace(
                batch_size=B, seq_len=L, hidden_size=args.hidden_size, n_items=args.n_items, overrides={}
            )
            step, batch = Stepper(build(name, cfg)), make_batch(cfg)
            times_ms = {n: [] for n in counts}
            for i in range(args.warmup + args.steps):
                for n in counts:
                    torch.set_num_threads(n)
                    start = time.perf_counter()
                    step(batch)
                    if i >= args.warmup:
                        times_ms[n].append((time.perf_counter() - start) * 1e3)
            med = {n: statistics.median(v) for n, v in times_ms.items()}
            cells = ", ".join(f"{n} thr {med[n]:.1f} ms ({med[n] / med[counts[0]]:.2f})" for n in counts)
            print(f"{name} B={B} L={L}: {cells}", flush=True)


if __name__ == "__main__":
    main()
