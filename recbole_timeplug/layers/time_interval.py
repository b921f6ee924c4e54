"""Personalised time-interval matrices and time-interval-aware self-attention (TiSASRec).

Li, Wang & McAuley, "Time Interval Aware Self-Attention for Sequential Recommendation", WSDM 2020.

Notation (``docs/models.md`` §1): a sample has ``n`` real history items at positions
``0..n-1`` of a right-padded row of width ``L``; ``t_i`` their timestamps; ``k`` = ``time_span``.

* Interval matrix (paper eq. for r^u_ij)::

      R_ij = min( floor(|t_i - t_j| / r_u), k )      for i, j < n;  R_ij = 0 if i or j is padding

  computed in float64 and returned as int64 in [0, k]. ``r_u`` (the personalised unit) is one of

  - ``user_min_history`` (default, leak-free): the smallest non-zero gap between consecutive items of the
    *visible* history of the sample itself (:func:`min_nonzero_gap`);
  - ``user_min_train``: the user's smallest non-zero consecutive gap over the training part
    (:func:`user_min_gap_table`, indexed by user id) - closest to the official code, which used the
    whole sequence;
  - ``none``: a constant divisor ``time_unit`` (``time_unit=1`` reproduces TiM4Rec's RecBole baseline).

  When there is no non-zero gap every interval is 0 whatever ``r_u`` is, so the fallback ``r_u = 1``
  (the official code's value) only matters for ``user_min_train`` users whose later items are spaced.

* Attention (paper eqs. 4-6), per head with width ``d_h``::

      e_ij = ( Q_i . K_j + Q_i . P^K_j + Q_i . R^K_ij ) / sqrt(d_h),   j <= i, j a real item
      z_i  = sum_j softmax_j(e)_ij ( V_j + P^V_j + R^V_ij ),          R^K_ij = M^RK[R_ij],  R^V_ij = M^RV[R_ij]

  :func:`naive_interval_attention` is this formula with the per-pair tensors R^K, R^V of shape
  B x L x L x d built explicitly (the official code's approach; reference for tests and benchmarks).
  :func:`bucketed_interval_attention` computes the same numbers without them (``docs/models.md`` §1.4):

      Q_i . R^K_ij = (Q_i M^RK^T)[R_ij]                       -> [B,h,L,k+1] matmul, then gather
      sum_j a_ij R^V_ij = sum_r ( sum_{j: R_ij = r} a_ij ) M^RV_r  -> scatter-add of a into k+1 buckets, then matmul

  Memory O(B h L (L + k + 1)) instead of O(B L^2 d).
"""

import math

import torch
import torch.nn.functional as F

TIME_SCALES = ("user_min_history", "user_min_train", "none")


# ----------------------------------------------------------------------------------- intervals
def history_mask(seq_len, width):
    """``[B, width]`` bool: True at the real history positions ``0..n-1`` of right-padded rows."""
    return torch.arange(width, device=seq_len.device).unsqueeze(0) < seq_len.unsqueeze(1)


def min_nonzero_gap(time_seq, seq_len, fallback=1.0):
    """Smallest non-zero ``|t_{i+1} - t_i|`` over each row's real history (float64 ``[B]``).

    Only pairs of real items count, so padding content never matters. Rows without a non-zero gap
    (one item, or all timestamps equal) get ``fallback``.
    """
    t = time_seq.to(torch.float64)
    gaps = (t[:, 1:] - t[:, :-1]).abs()
    # pair (i, i+1) is real when i + 1 < n
    real = history_mask(seq_len - 1, gaps.shape[1]) if gaps.shape[1] > 0 else gaps.bool()
    gaps = torch.where(real & (gaps > 0), gaps, torch.full_like(gaps, math.inf))
    r = gaps.min(dim=1).values if gaps.shape[1] > 0 else torch.full_like(t[:, 0], math.inf)
    return torch.where(torch.isinf(r), torch.full_like(r, fallback), r)


def user_min_gap_table(user_ids, last_history_time, target_time, n_users, fallback=1.0):
    """Per-user smallest non-zero consecutive gap over the training part (float64 ``[n_users]``).

    RecBole's sequential training set holds one sample per consecutive pair of a user's training
    interactions (history ending at item j, target item j+1), so the gaps ``target_time -
    last_history_time`` of all training samples are exactly the user's consecutive training gaps, even
    when the history itself was truncated to ``MAX_ITEM_LIST_LENGTH``. Users without a non-zero gap get
    ``fallback``.
    """
    gaps = (target_time.to(torch.float64) - last_history_time.to(torch.float64)).abs()
    gaps = torch.where(gaps > 0, gaps, torch.full_like(gaps, math.inf))
    table = torch.full((n_users,), math.inf, dtype=torch.float64, device=gaps.device)
    table = table.scatter_reduce(0, user_ids.long(), gaps, reduce="amin", include_self=True)
    return torch.where(torch.isinf(table), torch.full_like(table, fallback), table)


INTERVAL_ROUNDINGS = ("floor", "official")


def interval_matrix(time_seq, seq_len, divisor, time_span, rounding="floor"):
    """Interval buckets ``R_ij`` as int64 ``[B, L, L]`` in [0, k]; 0 wherever i or j is padding.

    ``rounding``:

    * ``floor`` - the paper's ``R_ij = min(floor(|t_i - t_j| / r), k)``;
    * ``official`` - the official code's ``min(|round((t_i - t_0) / r) - round((t_j - t_0) / r)|, k)``: each
      time is rescaled and rounded on its own (``t_0`` = the earliest time of the history, the official
      per-user minimum made leak-free; rounding half to even, as Python's ``round``), then differenced.
      It can differ from ``floor`` by one bucket either way (``|Δ| / r`` = 1.4 can give 1 or 2).

    Args:
        time_seq: ``[B, L]`` timestamps, float64 as the package loads ``TIME_FIELD`` (``_compat``; float32
            spacing at Unix-seconds scale is 64-128 s); any dtype is cast to float64 here.
        seq_len: ``[B]`` number of real items.
        divisor: ``[B]`` or scalar personal unit ``r_u`` (> 0).
        time_span: ``k``, the largest bucket.
    """
    t = time_seq.to(torch.float64)
    divisor = torch.as_tensor(divisor, dtype=torch.float64, device=t.device)
    if divisor.dim() == 1:
        divisor = divisor.view(-1, 1, 1)
    real = history_mask(seq_len, t.shape[1])
    if rounding == "official":
        start = t.masked_fill(~real, math.inf).amin(dim=1, keepdim=True)  # earliest real time
        start = torch.where(torch.isfinite(start), start, torch.zeros_like(start))  # empty history
        steps = torch.round((t - start).unsqueeze(2) / divisor)  # [B, L, 1]: t'_i = round((t_i - t_0) / r)
        scaled = (steps - steps.transpose(1, 2)).abs_()
    elif rounding == "floor":
        # in place on one [B, L, L] float64 buffer (the same operations and roundings as out of place)
        scaled = (t.unsqueeze(2) - t.unsqueeze(1)).abs_().div_(divisor).floor_()
    else:
        raise ValueError(f"interval rounding must be one of {INTERVAL_ROUNDINGS}, got {rounding!r}")
    # clamp in float64 *before* the integer cast: huge gaps (ms timestamps, bad units) never overflow
    scaled = scaled.clamp_(0, time_span)
    return scaled.masked_fill_(~(real.unsqueeze(2) & real.unsqueeze(1)), 0).to(torch.int64)


def used_buckets(intervals, n_buckets, renumber_below=0.75):
    """Renumber each sample's *used* buckets ``0..u_b-1`` (in increasing bucket order).

    Training-time interval dropout only has to draw masks for the buckets a sample's pairs actually use
    (at most ``min(k+1, L(L-1)/2 + 1)``, on ml-100k at L = 20 about 23 of 257 on average), so the
    per-sample tables can be ``[B, u, d]`` with ``u = max_b u_b`` instead of ``[B, k+1, d]``.

    Args:
        intervals: ``[B, L, L]`` int64 bucket ids in ``[0, n_buckets)``.
        n_buckets: ``k + 1``.
        renumber_below: renumber only when ``u < renumber_below * n_buckets``; otherwise (long histories use
            nearly every bucket, and the renumbering gather costs more than it saves) ``compact`` is
            ``intervals`` itself and ``rows`` is None (use the full ``[B, k+1, d]`` tables).
    Returns:
        ``(compact, rows)``: ``compact`` ``[B, L, L]`` int64 with ``rows[b, compact[b, i, j]] ==
        intervals[b, i, j]``; ``rows`` ``[B, u]`` int64, the bucket each compact id stands for (slots
        ``>= u_b`` of a sample hold bucket 0 and are never referenced). ``u`` is read on the host (one sync).
    """
    b = intervals.shape[0]
    flat = intervals.reshape(b, -1)
    used = torch.zeros(b, n_buckets, dtype=torch.bool, device=intervals.device).scatter_(1, flat, True)
    rank = used.cumsum(1) - 1  # compact id of every used bucket (int64)
    width = int(rank[:, -1].max()) + 1  # u = the largest number of used buckets in the batch
    if width >= renumber_below * n_buckets:
        return intervals, None
    compact = rank.gather(1, flat).view_as(intervals)
    # unused buckets go to a dump column that is cut off
    target = torch.where(used, rank, torch.full_like(rank, width))
    buckets = torch.arange(n_buckets, device=intervals.device).expand(b, -1)
    rows = torch.zeros(b, width + 1, dtype=torch.long, device=intervals.device).scatter_(1, target, buckets)
    return compact, rows[:, :width]


# ----------------------------------------------------------------------------------- attention
def _split_heads(x, n_heads):
    """``[..., L, d] -> [..., h, L, d/h]`` (channels sliced into heads, as the official code does)."""
    *lead, length, d = x.shape
    return x.view(*lead, length, n_heads, d // n_heads).transpose(-3, -2)


def _merge_heads(x):
    """``[B, h, L, d/h] -> [B, L, d]``."""
    b, h, length, dh = x.shape
    return x.transpose(1, 2).reshape(b, length, h * dh)


def _masked_softmax(scores, allowed):
    # dtype-aware fill (not -2^32+1, which overflows in fp16); every query row keeps >= 1 key (its first
    # real item), so the fill never produces a uniform row over masked keys
    scores = scores.masked_fill(~allowed.unsqueeze(1), torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


def bucketed_interval_attention(
    query, key, value, pos_key, pos_value, interval_key, interval_value, intervals, allowed, n_heads, attn_dropout=None
):
    """Time-interval attention without B x L x L x d tensors (see module docstring).

    Args:
        query: ``[B, Lq, d]`` projected Q (Lq = L, or the one row a last block computes); key, value:
            ``[B, L, d]`` projected K, V.
        pos_key, pos_value: ``[B, L, d]`` absolute-position embeddings P^K, P^V of the keys.
        interval_key, interval_value: interval tables M^RK, M^RV, ``[k+1, d]`` shared by the batch or
            ``[B, k+1, d]`` per sample (per-sample dropout masks).
        intervals: ``[B, Lq, L]`` int64 bucket ids in ``[0, k]`` (the queries' rows of R).
        allowed: ``[B, Lq, L]`` bool, True where query i may attend key j (causal and real key).
        n_heads: number of heads h (d divisible by h).
        attn_dropout: optional callable applied to the attention weights (training).
    Returns:
        ``[B, Lq, d]``.
    """
    b = query.shape[0]
    q = _split_heads(query, n_heads)  # [B,h,Lq,dh]
    # Q.K_j + Q.P^K_j = Q.(K_j + P^K_j): one matmul for both
    k = _split_heads(key + pos_key, n_heads)
    v = _split_heads(value + pos_value, n_heads)
    ek = _split_heads(interval_key, n_heads)  # [h,k+1,dh] or [B,h,k+1,dh]
    ev = _split_heads(interval_value, n_heads)
    scale = 1.0 / math.sqrt(q.shape[-1])

    index = intervals.unsqueeze(1).expand(b, n_heads, *intervals.shape[1:])  # [B,h,Lq,L]
    # einsum, not a broadcasting matmul: with a shared table it folds (B, L) into one GEMM per head
    # instead of B*h small strided ones (measured ~10x faster on CPU)
    table = "hrd" if ek.dim() == 3 else "bhrd"
    bucket_scores = torch.einsum(f"bhld,{table}->bhlr", q, ek)  # [B,h,L,k+1]: Q_i . M^RK_r, every bucket r
    scores = (torch.matmul(q, k.transpose(-1, -2)) + bucket_scores.gather(-1, index)) * scale
    alpha = _masked_softmax(scores, allowed)
    if attn_dropout is not None:
        alpha = attn_dropout(alpha)

    out = torch.matmul(alpha, v)
    # W[b,h,i,r] = sum_{j: R_ij = r} alpha_ij; masked keys have alpha exactly 0, so their bucket is irrelevant
    weights = torch.zeros_like(bucket_scores).scatter_add(-1, index, alpha)
    out = out + torch.einsum(f"bhlr,{table}->bhld", weights, ev)
    return _merge_heads(out)


def naive_interval_attention(
    query, key, value, pos_key, pos_value, pair_key, pair_value, allowed, n_heads, attn_dropout=None
):
    """Reference: the paper's formula with explicit per-pair interval embeddings (official code's way).

    ``pair_key``/``pair_value`` are ``[B, Lq, L, d]`` (R^K_ij = M^RK[R_ij], e.g. ``F.embedding(R, M^RK)``,
    possibly with per-pair dropout). Same other arguments as :func:`bucketed_interval_attention`.
    """
    q = _split_heads(query, n_heads)
    k = _split_heads(key, n_heads)
    v = _split_heads(value, n_heads)
    pk = _split_heads(pos_key, n_heads)
    pv = _split_heads(pos_value, n_heads)
    b, n_queries, length, d = pair_key.shape
    dh = d // n_heads
    rk = pair_key.view(b, n_queries, length, n_heads, dh).permute(0, 3, 1, 2, 4)  # [B,h,Lq,L,dh]
    rv = pair_value.view(b, n_queries, length, n_heads, dh).permute(0, 3, 1, 2, 4)
    scores = (
        torch.matmul(q, k.transpose(-1, -2))
        + torch.matmul(q, pk.transpose(-1, -2))
        + torch.einsum("bhid,bhijd->bhij", q, rk)  # Q_i . R^K_ij
    ) / math.sqrt(dh)
    alpha = _masked_softmax(scores, allowed)
    if attn_dropout is not None:
        alpha = attn_dropout(alpha)
    out = torch.matmul(alpha, v) + torch.matmul(alpha, pv) + torch.einsum("bhij,bhijd->bhid", alpha, rv)
    return _merge_heads(out)


def pair_embeddings(intervals, table):
    """``[B, L, L, d]`` per-pair rows ``table[R_ij]`` for the naive path.

    ``F.embedding`` rather than ``table[intervals]``: advanced indexing's backward (index_put with
    accumulate) was measured 170x slower on an H100.
    """
    return F.embedding(intervals, table)
