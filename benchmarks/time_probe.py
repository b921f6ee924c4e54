"""A dataset whose next item is decided by a time gap: can a model's time path learn what its twin cannot?

    python benchmarks/time_probe.py --out /tmp/probe                       # writes /tmp/probe/timeprobe/timeprobe.inter
    python benchmarks/results.py --dataset timeprobe --set data_path=/tmp/probe --config_files configs/time_probe.yaml \\
        --models SASRec,TiSASRec,TiSASRec-no-intervals,TiM4Rec,SSD4Rec --pairs TiSASRec:TiSASRec-no-intervals,TiM4Rec:SSD4Rec \\
        --metrics hit@1,ndcg@10 --out /tmp/probe/results --no_plot

On ml-100k neither time-aware model beats its time-blind twin (README, issue 13), and ml-100k cannot say whether
that is the data (51 % of its gaps are 0 s: ratings entered in sittings) or the port. This probe plants a rule
that only the time stamps reveal. Each user's history is a chain

    t_j = t_{j-1} + g_j,   g_j = G[l_j] * jitter_j,   l_j uniform over the len(G) gap levels,
    jitter_j log-uniform in [1/(1 + jitter), 1 + jitter]

and, with probability 1 - ``noise`` (else an item uniform over all items), the item after i_j is decided by the
gap *into* i_j (between the last two items of a history, so every sequential model sees it; the target's own
time stamp is never an input):

* ``session`` (default): a short gap (the shorter half of G) continues the chain, i_{j+1} = pi(i_j) for one fixed
  random permutation pi; a long gap starts a new session, i_{j+1} uniform over a small pool of items that belongs
  to that gap level (``--pool`` items each). The gap shifts *what kind* of item comes next: a time-blind model
  can only rank pi(i_j) first and the pools after it; one that reads the gap can put the right pool first.
* ``permute``: i_{j+1} = pi_{l_j}(i_j), one permutation per level. The item sequence alone leaves the next item
  uniform over len(G) successors; choosing needs an interaction of item and gap (not an additive shift), a
  harder test of what a time path can express.

The Bayes rates of Hit@1 with and without the gaps are printed with the share of test targets that follow the
rule. The default levels G = 60 s, 10 min, 100 min, 1000 min are 10x apart: TiSASRec's personal unit r_u (the
user's smallest gap, ~48-60 s) puts them in interval buckets ~1, 10-15, 100-156 and the clip ``time_span``
(256); TiM4Rec's LayerNorm over the raw gaps sees them spread over three orders of magnitude
(``time_transform: log`` evens them).

Writes ``<out>/<name>/<name>.inter`` (``user_id:token item_id:token timestamp:float``; Unix seconds from 2000).
Numpy only, deterministic by ``--seed``.
"""

import argparse
import json
import os
import sys

import numpy as np

T0 = 946_684_800  # 2000-01-01 UTC
GAPS = (60.0, 600.0, 6_000.0, 60_000.0)


RULES = ("session", "permute")


def generate(n_users=1000, n_items=200, length=50, gaps=GAPS, noise=0.1, seed=0, jitter=0.25, rule="session", pool=5):
    """``(user, item, timestamp, level, truth)``: arrays (users 1..n_users, items 1..n_items) sorted by user then
    time, ``level[k]`` the gap level of the gap *into* row k (-1 for a user's first item), and ``truth`` the rule's
    tables over 0-based items: ``perms`` [len(G), n_items] and, for ``session``, ``pools`` [len(G), pool]
    (rows of the short levels unused)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if len(gaps) < 2:
        raise ValueError("time_probe needs at least two gap levels")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    if length < 3:
        raise ValueError(f"length must be >= 3 (two gaps before a target), got {length}")
    n_levels = len(gaps)
    if rule == "session" and not (1 <= pool and n_levels * pool <= n_items):
        raise ValueError(f"session: need 1 <= pool and len(gaps) * pool <= n_items, got pool={pool}")
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(n_items) for _ in range(n_levels)])  # pi_l over 0-based items
    # (drawn for session only, so a permute probe's data does not depend on --pool)
    pools = rng.permutation(n_items)[: n_levels * pool].reshape(n_levels, pool) if rule == "session" else None
    level = rng.integers(0, n_levels, size=(n_users, length))
    level[:, 0] = -1
    jitter = np.exp(rng.uniform(-np.log1p(jitter), np.log1p(jitter), size=(n_users, length)))
    gap = np.where(level >= 0, np.asarray(gaps)[np.maximum(level, 0)] * jitter, 0.0)
    start = T0 + rng.uniform(0, 3 * 365 * 86_400, size=(n_users, 1))
    times = np.round(start + np.cumsum(gap, axis=1))
    items = np.empty((n_users, length), dtype=np.int64)
    items[:, 0] = rng.integers(0, n_items, size=n_users)
    items[:, 1] = rng.integers(0, n_items, size=n_users)  # no gap into item 0: item 1 is free
    short = n_levels // 2  # session: levels below this continue the chain, the longer ones start a session
    for j in range(1, length - 1):
        lev = level[:, j]
        if rule == "permute":
            follow = perms[lev, items[:, j]]
        else:
            restart = pools[lev, rng.integers(0, pool, size=n_users)]
            follow = np.where(lev < short, perms[0, items[:, j]], restart)
        random = rng.integers(0, n_items, size=n_users)
        items[:, j + 1] = np.where(rng.random(n_users) < noise, random, follow)
    users = np.repeat(np.arange(1, n_users + 1), length)
    truth = {"perms": perms, "pools": pools, "short_levels": short}
    return users, items.reshape(-1) + 1, times.reshape(-1), level.reshape(-1), truth


def _dcg(ranks, k=10):
    """Mean NDCG@k of a single relevant item at each of ``ranks`` (1-based; 0 beyond k)."""
    return float(np.mean([1.0 / np.log2(r + 1) if r <= k else 0.0 for r in ranks]))


def ceilings(n_items, n_levels, noise, rule="session", pool=5):
    """Best expected Hit@1 and NDCG@10 with and without the gaps: the rule's Bayes rates (collisions between
    successors and pools neglected; a noise target counted as uniformly ranked)."""
    if rule == "permute":  # aware: the one successor first; blind: the len(G) candidates in ranks 1..len(G)
        aware = (1.0, 1.0)
        blind = (1.0 / n_levels, _dcg(range(1, n_levels + 1)))
    else:  # aware: pi(i) for a short gap, the level's pool first for a long one; blind: pi(i), then every pool
        h = (n_levels // 2) / n_levels
        n_pooled = (n_levels - n_levels // 2) * pool
        aware = (h + (1 - h) / pool, h + (1 - h) * _dcg(range(1, pool + 1)))
        blind = (max(h, (1 - h) / n_pooled), h + (1 - h) * _dcg(range(2, n_pooled + 2)))
    floor = (1.0 / n_items, 10.0 / n_items * _dcg(range(1, 11)))
    out = {}
    for name, rates in (("time_aware", aware), ("time_blind", blind)):
        for metric, rate, base in zip(("hit@1", "ndcg@10"), rates, floor):
            out[f"{name}_{metric}"] = (1 - noise) * rate + noise * base
    return out


def follows_rule(prev, nxt, lev, truth):
    """Whether item ``nxt`` (0-based) is what the rule allows after ``prev`` given the gap level ``lev``."""
    if truth["pools"] is None:
        return truth["perms"][lev, prev] == nxt
    in_pool = (truth["pools"][lev] == nxt[:, None]).any(1)
    return np.where(lev < truth["short_levels"], truth["perms"][0, prev] == nxt, in_pool)


def empirical_rates(items, levels, truth, n_users, length):
    """Share of the histories' last items (the leave-one-out test targets) that follow the rule."""
    it = items.reshape(n_users, length) - 1
    lv = levels.reshape(n_users, length)
    return {"test_targets_following_rule": float(follows_rule(it[:, -2], it[:, -1], lv[:, -2], truth).mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="data_path: the atomic file goes to <out>/<name>/<name>.inter")
    p.add_argument("--name", default="timeprobe")
    p.add_argument("--n_users", type=int, default=1000)
    p.add_argument("--n_items", type=int, default=200)
    p.add_argument("--length", type=int, default=50, help="interactions per user")
    p.add_argument("--gaps", default=",".join(f"{g:g}" for g in GAPS), help="gap levels in seconds, comma-separated")
    p.add_argument("--noise", type=float, default=0.1, help="share of next items drawn uniformly instead of by the rule")
    p.add_argument("--jitter", type=float, default=0.25,
                   help="each gap is its level times a factor log-uniform in [1/(1+j), 1+j]; 0 = exact levels")
    p.add_argument("--rule", choices=RULES, default="session")
    p.add_argument("--pool", type=int, default=5, help="session: items per long-gap level's pool")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    gaps = tuple(float(g) for g in args.gaps.split(","))
    users, items, times, levels, truth = generate(args.n_users, args.n_items, args.length, gaps, args.noise, args.seed,
                                                  args.jitter, args.rule, args.pool)
    folder = os.path.join(args.out, args.name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{args.name}.inter")
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, t in zip(users, items, times):
            f.write(f"{u}\t{i}\t{t:.0f}\n")
    report = {"file": path, "rows": int(users.size), "gaps_s": list(gaps), "noise": args.noise, "jitter": args.jitter,
              "rule": args.rule, **ceilings(args.n_items, len(gaps), args.noise, args.rule, args.pool),
              **empirical_rates(items, levels, truth, args.n_users, args.length)}
    print(json.dumps(report, indent=1))
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
