"""Training-step time and peak memory of TiM4Rec (each available SSD backend) vs RecBole's SASRec.

One run measures every (model, backend, L) and prints the ratios to SASRec at the same L:

    python benchmarks/tim4rec_speed.py                      # L = 50, 200, 1000; d = 64; batch 256
    python benchmarks/tim4rec_speed.py --batch_size 16 --lengths 50 200 --steps 3   # a small CPU run

A step is forward + backward + Adam update of ``calculate_loss`` (full-softmax CE over ``--n_items``
items) on a synthetic batch of full-length sequences with increasing timestamps.  Both models use
their shipped defaults (TiM4Rec: official movie_64d settings, 2 layers, H = 4, N = 32, chunk 32;
SASRec: RecBole's SASRec.yaml, 2 layers, 2 heads) at ``hidden_size`` d.

Each measurement runs in its own fresh subprocess, so the peak-memory numbers do not contaminate each
other: on CUDA ``torch.cuda.max_memory_allocated`` during the timed steps (after warm-up; Triton
autotunes in the first calls); on CPU the growth of the process's peak resident set size
(``resource.getrusage().ru_maxrss``) during warm-up + timed steps over the RSS before them - an
approximation that includes allocator caching.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def build(model_name, backend, length, hidden, n_items, device):
    import recbole_timeplug  # noqa: F401  (compat fixes: anomaly mode off, numpy aliases)
    from recbole_timeplug.testing import ItemCountDataset, standalone_config, yaml_defaults

    base = {"MAX_ITEM_LIST_LENGTH": length, "device": device}
    if model_name == "SASRec":
        import recbole
        from recbole.model.sequential_recommender.sasrec import SASRec

        cfg = yaml_defaults(os.path.join(os.path.dirname(recbole.__file__), "properties", "model", "SASRec.yaml"))
        cfg.update(base, hidden_size=hidden, inner_size=4 * hidden, loss_type="CE")
        return SASRec(standalone_config(**cfg), ItemCountDataset(n_items))
    from recbole_timeplug.model.sequential_recommender.tim4rec import TiM4Rec

    cfg = yaml_defaults(os.path.join(REPO, "recbole_timeplug", "properties", "model", "TiM4Rec.yaml"))
    cfg.update(base, hidden_size=hidden, ssd_backend=backend)
    return TiM4Rec(standalone_config(**cfg), ItemCountDataset(n_items))


def measure(model_name, backend, length, args):
    """Runs in a fresh process: {'ms': time per step, 'peak_mb': peak memory of the steps}."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(model_name, backend, length, args.hidden, args.n_items, args.device).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = args.batch_size
    interaction = {
        "item_id_list": torch.randint(1, args.n_items, (batch, length), generator=g),
        "item_length": torch.full((batch,), length, dtype=torch.long),
        "timestamp_list": (1.0e9 + torch.cumsum(torch.randint(0, 86_400, (batch, length), generator=g), 1)).float(),
        "item_id": torch.randint(1, args.n_items, (batch,), generator=g),
    }
    interaction = {k: v.to(device) for k, v in interaction.items()}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model.calculate_loss(interaction)
        loss.backward()
        optimizer.step()

    cuda = device.type == "cuda"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / args.steps * 1e3
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024  # KiB on Linux
    return {"ms": ms, "peak_mb": peak}


def available_backends(device):
    from recbole_timeplug.layers.ssd import load_mamba_triton, mamba_triton_error

    backends = ["torch"]
    if torch.device(device).type == "cuda":
        if load_mamba_triton() is not None:
            backends.append("triton")
        else:
            print(f"# triton backend unavailable: {mamba_triton_error()}")
    return backends


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--batch_size", "--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--n_items", "--n-items", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--single", help=argparse.SUPPRESS)  # model,backend,L: one measurement (child)
    args = parser.parse_args()

    if args.single:
        model_name, backend, length = args.single.split(",")
        print(json.dumps(measure(model_name, backend, int(length), args)))
        return

    backends = available_backends(args.device)
    runs = [("SASRec", "-")] + [("TiM4Rec", b) for b in backends]
    results = {}
    passthrough = ["--batch_size", str(args.batch_size), "--hidden", str(args.hidden), "--n_items",
                   str(args.n_items), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
    for length in args.lengths:
        for model_name, backend in runs:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--single", f"{model_name},{backend},{length}", *passthrough],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                print(f"# {model_name}/{backend} L={length} failed:\n{proc.stderr[-2000:]}")
                continue
            results[(model_name, backend, length)] = json.loads(proc.stdout.strip().splitlines()[-1])

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    mem_kind = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS growth (ru_maxrss)"
    print(f"\n# device {device_name} ({torch.get_num_threads()} threads), torch {torch.__version__}, d={args.hidden}, "
          f"batch {args.batch_size}, {args.n_items} items, {args.steps} timed steps after {args.warmup} warm-up; "
          f"memory = {mem_kind}")
    print("| L | model | backend | ms / step | peak MiB | time / SASRec | memory / SASRec |")
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        ref = results.get(("SASRec", "-", length))
        for model_name, backend in runs:
            r = results.get((model_name, backend, length))
            if r is None:
                continue
            t_ratio = f"{r['ms'] / ref['ms']:.2f}" if ref else "n/a"
            m_ratio = f"{r['peak_mb'] / ref['peak_mb']:.2f}" if ref and ref["peak_mb"] > 0 else "n/a"
            print(f"| {length} | {model_name} | {backend} | {r['ms']:.1f} | {r['peak_mb']:.0f} | {t_ratio} | {m_ratio} |")
    if "triton" in backends:
        print("\n| L | torch / triton (time) | torch / triton (memory) |\n|---|---|---|")
        for length in args.lengths:
            a, b = results.get(("TiM4Rec", "torch", length)), results.get(("TiM4Rec", "triton", length))
            if a and b:
                print(f"| {length} | {a['ms'] / b['ms']:.2f} | {a['peak_mb'] / max(b['peak_mb'], 1e-9):.2f} |")


if __name__ == "__main__":
    main()
