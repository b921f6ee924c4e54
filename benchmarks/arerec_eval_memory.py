"""Peak memory and time of ARERec full-sort evaluation with and without candidate chunking.

Each setting runs in a fresh subprocess: it builds ml-100k (RecBole's shipped copy) under the common
protocol (``configs/ml-100k_results.yaml``, ARERec defaults d 64, r 7, 2 heads, M 50), an ARERec with random
weights, takes one evaluation batch of ``--users`` test users and times ``full_sort_predict`` on it.

Peak memory, measured for real:
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (bytes held by tensors);
* CPU (Linux): the process's peak resident set size during the call: ``/proc/self/clear_refs`` ``5`` resets
  the high-water mark ``VmHWM`` just before the call, and the reported number is ``VmHWM`` after it minus
  ``VmRSS`` before it (falls back to ``getrusage`` ``ru_maxrss`` deltas where ``clear_refs`` is unavailable,
  which can under-report when set-up peaked higher).

    python benchmarks/arerec_eval_memory.py                  # all settings, 256 users, ratios vs unchunked
    python benchmarks/arerec_eval_memory.py --device=cuda --users=943
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = [  # (label, eval_item_chunk, eval_user_chunk); None = no chunking
    ("unchunked", None, None),
    ("items 32 x users 256", 32, 256),  # ARERec.yaml's defaults
    ("items 512 x users 128", 512, 128),
    ("items 128 x users 64", 128, 64),
]


def _status_kb(key):
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def child(args):
    import torch

    import recbole_timeplug  # noqa: F401  (compat fixes)
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed
    from recbole_timeplug.config import Config
    from recbole_timeplug.registry import get_model

    torch.set_num_threads(args.threads)
    config = Config(
        model="ARERec",
        dataset="ml-100k",
        config_file_list=[os.path.join(REPO, "configs", "ml-100k_results.yaml")],
        config_dict={
            "state": "ERROR",
            "device": args.device,
            "eval_batch_size": 4096,
            "eval_item_chunk": args.item_chunk,
            "eval_user_chunk": args.user_chunk,
            "use_gpu": args.device == "cuda",
        },
    )
    init_seed(2020, True)
    dataset = create_dataset(config)
    train_data, _, test_data = data_preparation(config, dataset)
    model = get_model("ARERec")(config, train_data._dataset)  # index from the training split, as in a run
    model = model.to(args.device).eval()
    batch = next(iter(test_data))[0][: args.users].to(args.device)
    with torch.no_grad():  # warm-up on a few users (allocator, lazy init)
        model.full_sort_predict(batch[:4])
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
                f.write("5")
            base, how = _status_kb("VmRSS") * 1024, "VmHWM-VmRSS"
        except OSError:
            base, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss delta"
    start = time.perf_counter()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak, how = torch.cuda.max_memory_allocated() - base, "cuda.max_memory_allocated"
    elif how == "VmHWM-VmRSS":
        peak = _status_kb("VmHWM") * 1024 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"seconds": seconds, "peak_bytes": max(peak, 0), "how": how, "users": len(batch),
                      "items": scores.shape[1], "checksum": float(scores[:, 1:].double().sum())}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--users", type=int, default=256,
                        help="evaluation rows scored in one call (ml-100k has 943 test users; unchunked on all "
                             "of them needs ~10 GB)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--item_chunk", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--user_chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    rows = []
    for label, items, users in SETTINGS:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--device={args.device}",
               f"--users={args.users}", f"--threads={args.threads}"]
        cmd += [f"--item_chunk={items}"] if items else []
        cmd += [f"--user_chunk={users}"] if users else []
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            raise SystemExit(f"{label} failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((label, result))
        print(f"{label:>24}: {result['seconds']:7.2f} s  peak {result['peak_bytes'] / 2**20:9.1f} MiB  "
              f"({result['how']}, {result['users']} users x {result['items']} items)", flush=True)
    base = rows[0][1]
    print(f"\nratios vs unchunked ({args.device}):")
    for label, result in rows[1:]:
        same = abs(result["checksum"] - base["checksum"]) <= 1e-6 * max(1.0, abs(base["checksum"]))
        print(f"{label:>24}: memory x{result['peak_bytes'] / max(base['peak_bytes'], 1):.3f}  "
              f"time x{result['seconds'] / base['seconds']:.2f}  scores equal: {same}")


if __name__ == "__main__":
    main()
