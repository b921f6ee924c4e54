"""Write a synthetic dataset shaped like MovieLens-1M as RecBole atomic files (deterministic by seed).

    python benchmarks/synthetic.py --out dataset --name synthetic-ml1m            # 6,040 users, 3,706 items, 1,000,209 rows
    python benchmarks/synthetic.py --out /tmp/d --name syn --n_users 600 --n_interactions 100000

Shape (defaults follow ML-1M): every user has at least ``--min_len`` (20) interactions; history lengths are
log-normal (sigma 1.0, so mean/median ~ 1.65 as in ML-1M's 165/96) scaled to sum exactly to
``--n_interactions`` and capped at ``--max_len`` (default: the number of items) — long histories for the
efficiency benchmark. A user's items are distinct, drawn without replacement with Zipf(``--zipf``)
popularity (Gumbel top-k, vectorised per block of users). Timestamps are Unix seconds: a per-user start in
2000-2003 plus log-normal gaps with ``--burst`` of them zero (ML-1M users rate many films in one sitting).

Writes ``<out>/<name>/<name>.inter`` with ``user_id:token item_id:token timestamp:float`` (users and items
numbered from 1). Numpy only; 1M rows take a few seconds.
"""

import argparse
import os
import sys

import numpy as np

T0 = 946_684_800  # 2000-01-01 UTC
SPAN = 3 * 365 * 86_400


def history_lengths(rng, n_users, n_interactions, min_len, max_len, sigma=1.0):
    """Per-user history lengths: >= min_len, <= max_len, summing exactly to n_interactions."""
    if n_users * min_len > n_interactions:
        raise ValueError(f"n_interactions={n_interactions} < n_users*min_len={n_users * min_len}: "
                         f"lower --min_len or raise --n_interactions")
    if n_users * max_len < n_interactions:
        raise ValueError(f"n_interactions={n_interactions} > n_users*max_len={n_users * max_len}: every user would "
                         f"need more than {max_len} distinct items; raise --n_items/--max_len or lower --n_interactions")
    extra_total = n_interactions - n_users * min_len
    weights = rng.lognormal(mean=0.0, sigma=sigma, size=n_users)
    extra = np.floor(weights / weights.sum() * extra_total).astype(np.int64)
    cap = max_len - min_len
    extra = np.minimum(extra, cap)
    while True:  # hand the capped overflow and the rounding remainder to users below the cap
        missing = extra_total - int(extra.sum())
        if missing == 0:
            break
        room = cap - extra
        open_users = np.flatnonzero(room > 0)
        if missing <= open_users.size:
            extra[rng.choice(open_users, size=missing, replace=False)] += 1
        else:  # proportional to the room left; never exceeds it since missing <= room.sum()
            extra += room * missing // int(room.sum())
    lengths = min_len + extra
    assert int(lengths.sum()) == n_interactions
    return lengths


def generate(n_users=6040, n_items=3706, n_interactions=1_000_209, min_len=20, max_len=None, zipf=1.0,
             burst=0.3, seed=0, block=512):
    """``(user, item, timestamp)`` int64 arrays sorted by user then time."""
    rng = np.random.default_rng(seed)
    max_len = n_items if max_len is None else min(max_len, n_items)
    lengths = history_lengths(rng, n_users, n_interactions, min_len, max_len)
    log_w = -zipf * np.log(np.arange(1, n_items + 1, dtype=np.float64))
    log_w = log_w[rng.permutation(n_items)].astype(np.float32)  # popularity not tied to the id order
    items = np.empty(n_interactions, dtype=np.int64)
    pos = 0
    for start in range(0, n_users, block):  # Gumbel top-k = sampling without replacement by weight
        stop = min(start + block, n_users)
        keys = log_w[None, :] + rng.gumbel(size=(stop - start, n_items)).astype(np.float32)
        order = np.argsort(-keys, axis=1)
        lens = lengths[start:stop]
        take = np.arange(n_items)[None, :] < lens[:, None]
        chunk = order[take]  # row-major: each user's first lens[u] items, in draw order
        items[pos:pos + chunk.size] = chunk + 1
        pos += chunk.size
    users = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)
    gaps = np.rint(rng.lognormal(mean=8.0, sigma=2.5, size=n_interactions)).astype(np.int64)
    gaps[rng.random(n_interactions) < burst] = 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps[starts] = 0
    csum = np.cumsum(gaps)
    times = csum - np.repeat(csum[starts], lengths) + np.repeat(T0 + rng.integers(0, SPAN, size=n_users), lengths)
    return users, items, times


def write(out, name, users, items, times):
    path = os.path.join(out, name, f"{name}.inter")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    import pandas as pd

    frame = pd.DataFrame({"user_id:token": users, "item_id:token": items, "timestamp:float": times})
    frame.to_csv(path, sep="\t", index=False)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="dataset", help="data_path: the dataset goes to <out>/<name>/<name>.inter")
    p.add_argument("--name", default="synthetic-ml1m")
    p.add_argument("--n_users", type=int, default=6040)
    p.add_argument("--n_items", type=int, default=3706)
    p.add_argument("--n_interactions", type=int, default=1_000_209)
    p.add_argument("--min_len", type=int, default=20)
    p.add_argument("--max_len", type=int, default=None, help="longest history (default: n_items)")
    p.add_argument("--zipf", type=float, default=1.0, help="item popularity exponent")
    p.add_argument("--burst", type=float, default=0.3, help="share of zero time gaps")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for key in ("n_users", "n_items", "n_interactions", "min_len"):
        if getattr(a, key) < 1:
            p.error(f"--{key} must be >= 1")
    if not 0.0 <= a.burst < 1.0:
        p.error("--burst must be in [0, 1)")
    try:
        users, items, times = generate(a.n_users, a.n_items, a.n_interactions, a.min_len, a.max_len, a.zipf,
                                       a.burst, a.seed)
    except ValueError as err:
        p.error(str(err))
    path = write(a.out, a.name, users, items, times)
    lengths = np.bincount(users)[1:]
    print(f"wrote {path}: {users.size:,} interactions, {a.n_users:,} users, {np.unique(items).size:,} items used "
          f"of {a.n_items:,}; history length mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
          f"max {lengths.max()}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
