"""Matmul/conv FLOPs of one training step (forward + backward) of each model, and their ratio to SASRec's.

    python benchmarks/flops.py --batch_size 1024 --seq_len 20
    python benchmarks/flops.py --batch_size 16 --seq_len 50 --models TiM4Rec,TiSASRec,MASAN,LightSANs

The count is ``torch.utils.flop_counter`` (matrix products and convolutions; elementwise work is not
counted): a floor for any step-time ratio on a compute-bound CPU, whatever the implementation.  Models are
built as in ``step_ratio.py`` (shipped YAML defaults at ``--hidden_size``, CE loss, the same synthetic batch).
"""

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

try:
    from benchmarks.step_ratio import build, make_batch
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    from step_ratio import build, make_batch


def step_flops(model, batch):
    with FlopCounterMode(display=False) as counter:
        loss = model.calculate_loss(batch)
        if isinstance(loss, tuple):  # several loss terms (TiMiRec's), summed as RecBole's trainer does
            loss = sum(loss)
        loss.backward()
    return counter.get_total_flops()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="TiM4Rec,TiSASRec,MASAN,LightSANs,GRU4Rec")
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--seq_len", type=int, default=20)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--n_items", type=int, default=1700)
    p.add_argument("--set", action="append", default=[], help="key=value for every model but SASRec (YAML syntax)")
    args = p.parse_args()
    import yaml

    args.overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    import recbole_timeplug  # noqa: F401  (compat fixes)

    batch = make_batch(args)
    base = step_flops(build("SASRec", args).train(), batch)
    print(f"B={args.batch_size} L={args.seq_len} d={args.hidden_size}: SASRec {base / 1e9:.3f} GFLOP per step")
    for name in args.models.split(","):
        flops = step_flops(build(name, args).train(), batch)
        print(f"  {name:10s} {flops / 1e9:8.3f} GFLOP  {flops / base:5.2f}x SASRec")


if __name__ == "__main__":
    main()
