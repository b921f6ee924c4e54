"""Training-step time of a model vs RecBole's SASRec, measured alternately in one process (a noisy-box ratio).

    OMP_NUM_THREADS=1 python benchmarks/step_ratio.py --model TiM4Rec --batch_size 1024 --seq_len 20
    OMP_NUM_THREADS=1 python benchmarks/step_ratio.py --model TiM4Rec --batch_size 16 --seq_len 50 --set chunk_size=64
    OMP_NUM_THREADS=1 python benchmarks/step_ratio.py --model TiM4Rec --batch_size 1024 --seq_len 20 --compile

Both models are built from their shipped YAML defaults (SASRec: RecBole's SASRec.yaml, FFN ``inner_size`` 256 as in
every result table) at ``--hidden_size``,
on the same synthetic right-padded batch (lengths uniform in 1..L, increasing Unix-second timestamps). One
step is ``calculate_loss`` + backward + Adam; the two models take turns, step by step, so a load change on a
shared machine hits both, and the printed ratio is the ratio of the medians.

``--compile`` adds a ``torch.compile``-d ``calculate_loss`` of each model (a second copy, same initial weights,
its own Adam; what ``torch_compile: True`` trains with) to the rotation, and prints compiled vs eager of the
same model (the number that says whether compiling helps), the model vs SASRec both ways, and the one-time
compile seconds (the first compiled step, forward + backward compile, minus an eager step).
"""

import argparse
import os
import statistics
import time

import torch
import yaml

def build(name, args):
    import recbole

    from recbole_timeplug import get_model
    from recbole_timeplug.registry import model_config_files
    from recbole_timeplug.testing import ItemCountDataset, standalone_config, yaml_defaults

    recbole_yaml = os.path.join(os.path.dirname(recbole.__file__), "properties", "model", f"{name}.yaml")
    cfg = yaml_defaults(recbole_yaml) if os.path.isfile(recbole_yaml) else {}
    for path in model_config_files(name, "none"):
        if not path.endswith("overall.yaml"):
            cfg.update(yaml_defaults(path))
    cfg.update(
        MAX_ITEM_LIST_LENGTH=args.seq_len, hidden_size=args.hidden_size, embedding_size=args.hidden_size,
        loss_type="CE", train_neg_sample_args=None, device="cpu",
    )
    if name != "SASRec":
        cfg.update(args.overrides)
    torch.manual_seed(0)
    return get_model(name)(standalone_config(**cfg), ItemCountDataset(args.n_items))


def make_batch(args):
    """The synthetic right-padded batch (B = ``batch_size``, L = ``seq_len``) every model steps on."""
    g = torch.Generator().manual_seed(0)
    B, L = args.batch_size, args.seq_len
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    real = torch.arange(L)[None] < lengths[:, None]
    times = 8.8e8 + torch.cumsum(torch.randint(0, 86_400, (B, L), generator=g), 1).double()
    return {
        "item_id_list": torch.where(real, torch.randint(1, args.n_items, (B, L), generator=g), 0),
        "item_length": lengths,
        "timestamp_list": torch.where(real, times, 0.0),
        "item_id": torch.randint(1, args.n_items, (B,), generator=g),
        "user_id": torch.randint(1, 100, (B,), generator=g),
    }


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="TiM4Rec")
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--seq_len", type=int, default=20)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--n_items", type=int, default=1700)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="key=value for --model (YAML syntax)")
    return p


def parse(p):
    args = p.parse_args()
    args.overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    return args


class Stepper:
    """One training step (``calculate_loss`` + backward + Adam) of a model, optionally through torch.compile."""

    def __init__(self, model, compiled=False):
        self.model = model.train()
        self.loss = torch.compile(model.calculate_loss) if compiled else model.calculate_loss
        self.optim = torch.optim.Adam(model.parameters(), lr=1e-3)

    def __call__(self, batch):
        self.optim.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        if isinstance(loss, tuple):  # several loss terms (e.g. TiMiRec's), summed as RecBole's trainer does
            loss = sum(loss)
        loss.backward()
        self.optim.step()


def main():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--compile", action="store_true", help="also time torch.compile-d copies of both models")
    args = parse(p)

    import recbole_timeplug  # noqa: F401  (compat fixes: anomaly mode off)

    names = list(dict.fromkeys(("SASRec", args.model)))
    steppers = {name: Stepper(build(name, args)) for name in names}
    if args.compile:
        steppers.update({f"{name}+compile": Stepper(build(name, args), compiled=True) for name in names})
    batch = make_batch(args)

    first_ms = {}
    for i in range(args.warmup):
        for name, step in steppers.items():
            start = time.perf_counter()
            step(batch)
            if i == 0:
                first_ms[name] = (time.perf_counter() - start) * 1e3
    times_ms = {name: [] for name in steppers}
    for _ in range(args.steps):
        for name, step in steppers.items():
            start = time.perf_counter()
            step(batch)
            times_ms[name].append((time.perf_counter() - start) * 1e3)
    med = {name: statistics.median(v) for name, v in times_ms.items()}
    head = f"B={args.batch_size} L={args.seq_len} threads={torch.get_num_threads()}:"
    print(f"{head} SASRec {med['SASRec']:.1f} ms, {args.model} {med[args.model]:.1f} ms, ratio "
          f"{med[args.model] / med['SASRec']:.2f}")
    if args.compile:
        for name in names:
            c = f"{name}+compile"
            print(f"{head} {name} compiled {med[c]:.1f} ms vs eager {med[name]:.1f} ms: compiled/eager "
                  f"{med[c] / med[name]:.2f}; compile {(first_ms[c] - med[name]) / 1e3:.1f} s (first step)")
        if args.model != "SASRec":
            print(f"{head} {args.model}/SASRec eager {med[args.model] / med['SASRec']:.2f}, both compiled "
                  f"{med[args.model + '+compile'] / med['SASRec+compile']:.2f}, {args.model} compiled vs SASRec "
                  f"eager {med[args.model + '+compile'] / med['SASRec']:.2f}")


if __name__ == "__main__":
    main()
