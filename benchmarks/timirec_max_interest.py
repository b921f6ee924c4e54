"""TiMiRec pretrain full-sort scoring: chunked GEMM + amax over K vs the naive B x K x N tensor (speed and memory).

    python benchmarks/timirec_max_interest.py [--batch 256 --interests 6 --items 60000 --dim 64 --device cpu]

Prints time per call (median of --repeat) and peak memory of both, and their ratios, measured in one run.
CUDA: peak = torch.cuda.max_memory_allocated over the call.  CPU: peak = the largest single allocation made by
an op during the call (torch.profiler, profile_memory=True), which is the B x N / B x K x N score tensor.
"""

import argparse
import statistics
import time

import torch

from recbole_timeplug.layers.interest import max_interest_scores, max_interest_scores_naive


def _time(fn, repeat, device):
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events()), default=0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--interests", type=int, default=6)
    p.add_argument("--items", type=int, default=60000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    z = torch.randn(a.batch, a.interests, a.dim, device=device)
    items = torch.randn(a.items, a.dim, device=device)
    with torch.no_grad():
        assert torch.allclose(max_interest_scores(z, items), max_interest_scores_naive(z, items), atol=1e-4)
        rows = {}
        for name, fn in (("chunked", max_interest_scores), ("naive B*K*N", max_interest_scores_naive)):
            call = lambda fn=fn: fn(z, items)  # noqa: E731
            call()  # warm-up
            rows[name] = (_time(call, a.repeat, device), _peak(call, device))
    print(f"device={device} B={a.batch} K={a.interests} N={a.items} d={a.dim}")
    for name, (t, m) in rows.items():
        print(f"{name:12s}  {t * 1e3:9.2f} ms   peak {m / 2**20:9.1f} MiB")
    (tf, mf), (tn, mn) = rows["chunked"], rows["naive B*K*N"]
    print(f"speed ratio naive/chunked = {tn / tf:.2f}x   memory ratio naive/chunked = {mn / max(mf, 1):.2f}x")


if __name__ == "__main__":
    main()
