"""TiSASRec: intervals by hand, bucketed vs naive attention, an independent reference of the official
forward pass, padding invariance, config errors, and end-to-end runs (ml-100k via the CLI; paper protocol)."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, cli_args, printed_metrics
from recbole_timeplug.layers.time_interval import (
    bucketed_interval_attention,
    history_mask,
    interval_matrix,
    min_nonzero_gap,
    naive_interval_attention,
    pair_embeddings,
    used_buckets,
    user_min_gap_table,
)
from recbole_timeplug.model.sequential_recommender.tisasrec import TiSASRec
from recbole_timeplug.testing import ItemCountDataset, standalone_config

PAD_GARBAGE_TIME = 5.0e9  # padding content that must never matter


# ------------------------------------------------------------------------------------ helpers
def _model(**overrides):
    config = standalone_config(
        MAX_ITEM_LIST_LENGTH=8, device="cpu",
        hidden_size=12, n_layers=2, n_heads=3, dropout_prob=0.2, time_span=6, time_scale="user_min_history",
        time_unit=1.0, interval_dropout="bucket", interval_mask="used", layer_norm_eps=1e-8, initializer="xavier_uniform",
        initializer_range=0.02, l2_emb=0.0, loss_type="CE",
        train_neg_sample_args={"distribution": "none", "sample_num": "none"},
    )
    config.update(overrides)
    torch.manual_seed(0)
    return TiSASRec(config, ItemCountDataset(30))


def _batch(seed=0, batch=5, width=8, n_items=30):
    """Right-padded item ids / times with ties and zero gaps; lengths include 1 and the full width."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, width, 3, 5, 2][:batch])
    items = torch.randint(1, n_items, (batch, width), generator=g)
    gaps = torch.randint(0, 4, (batch, width), generator=g).double() * 60.0  # zero gaps and ties
    times = (1.0e9 + torch.cumsum(gaps, 1)).float()  # float32 like RecBole
    real = history_mask(lengths, width)
    return items.masked_fill(~real, 0), lengths, times.masked_fill(~real, 0.0)


# ------------------------------------------------------------------------------------ intervals
def test_interval_matrix_hand_computed():
    # row 0: duplicate timestamps (100, 100 and 109, 109), zero gaps, padding with garbage times.
    # consecutive gaps 0, 3, 6, 0 -> r_u = 3 (smallest non-zero); |t_i - t_j| / 3 floored, clipped at k = 2
    # row 1: all timestamps equal -> every interval 0 (r_u falls back to 1, which cannot matter)
    # row 2: a single item -> only the diagonal
    times = torch.tensor(
        [
            [100.0, 100.0, 103.0, 109.0, 109.0, PAD_GARBAGE_TIME, 7.0],
            [50.0, 50.0, 50.0, 0.0, 0.0, 0.0, 0.0],
            [42.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ]
    )
    lengths = torch.tensor([5, 3, 1])
    r = min_nonzero_gap(times, lengths)
    assert r.dtype == torch.float64 and r.tolist() == [3.0, 1.0, 1.0]
    got = interval_matrix(times, lengths, r, time_span=2)
    assert got.dtype == torch.int64
    expected = torch.zeros(3, 7, 7, dtype=torch.int64)
    # times 100 100 103 109 109:  |0| |0| |3|->1 |9|->3->clip 2 ; 103 vs 109: 6 -> 2
    expected[0, :5, :5] = torch.tensor(
        [
            [0, 0, 1, 2, 2],
            [0, 0, 1, 2, 2],
            [1, 1, 0, 2, 2],
            [2, 2, 2, 0, 0],
            [2, 2, 2, 0, 0],
        ]
    )
    assert torch.equal(got, expected)
    # with a larger k the un-clipped buckets 3 appear
    assert interval_matrix(times, lengths, r, time_span=10)[0, 0, 3].item() == 3
    # time_scale none: a constant unit
    assert interval_matrix(times, lengths, 2.0, time_span=10)[0, 2, :5].tolist() == [1, 1, 0, 3, 3]


def test_official_interval_rounding_hand_computed():
    """The official code: t'_i = round((t_i - t_0) / r) (half to even), R_ij = min(|t'_i - t'_j|, k)."""
    times = torch.tensor([[10.0, 11.4, 12.5, 13.5, 17.0, PAD_GARBAGE_TIME]], dtype=torch.float64)
    lengths = torch.tensor([5])
    # r = 1: t - t_0 = 0, 1.4, 2.5, 3.5, 7 -> rounded 0, 1, 2 (half to even), 4 (half to even), 7
    got = interval_matrix(times, lengths, 1.0, time_span=5, rounding="official")
    steps = [0, 1, 2, 4, 7]
    expected = torch.zeros(1, 6, 6, dtype=torch.int64)
    expected[0, :5, :5] = torch.tensor([[min(abs(a - b), 5) for b in steps] for a in steps])
    assert torch.equal(got, expected)
    # where the two roundings differ: |12.5 - 10| = 2.5 -> floor 2, official 2; |13.5 - 11.4| = 2.1 -> floor 2, official 3
    floor = interval_matrix(times, lengths, 1.0, time_span=5)
    assert floor[0, 1, 3].item() == 2 and got[0, 1, 3].item() == 3 and floor[0, 0, 2].item() == got[0, 0, 2].item() == 2
    # t_0 is the earliest *real* time: padding (garbage) never shifts the rounding
    assert interval_matrix(times, torch.tensor([3]), 1.0, 5, "official")[0, :3, :3].tolist() == [[0, 1, 2], [1, 0, 1], [2, 1, 0]]
    # the model passes its `interval_rounding` through (time_scale none, time_unit 1 -> r = 1)
    model = _model(interval_rounding="official", time_scale="none", time_unit=1.0, time_span=5)
    assert torch.equal(model.intervals(times, lengths), got)


def test_l2_is_the_keras_strength():
    """Keras' l2(lambda) adds lambda * sum(w^2) per table (no 1/2): the official regulariser."""
    model = _model(l2_emb=0.01).eval()
    tables = (model.item_embedding, model.position_key_embedding, model.position_value_embedding,
              model.interval_key_embedding, model.interval_value_embedding)
    by_hand = 0.01 * sum(float((t.weight.detach().double() ** 2).sum()) for t in tables)
    assert abs(model._l2_embeddings().item() - by_hand) < 1e-6 * by_hand


def test_intervals_large_timestamps_no_overflow():
    # millisecond timestamps: |dt| / 1 ~ 1e12 >> int32; must clamp to k, never wrap negative
    times = torch.tensor([[1.6e12, 1.7e12, 1.7e12 + 1000.0]], dtype=torch.float64)
    got = interval_matrix(times, torch.tensor([3]), 1.0, time_span=256)
    assert got.min().item() >= 0 and got.max().item() == 256 and got[0, 1, 2].item() == 256


def test_user_min_gap_table_hand_computed():
    # user 1: gaps 5, 0, 2 -> 2; user 2: only zero gaps -> fallback 1; user 3: gap 7; user 0 unseen -> 1
    users = torch.tensor([1, 1, 1, 2, 3])
    last_history = torch.tensor([10.0, 15.0, 15.0, 4.0, 0.0])
    target = torch.tensor([15.0, 15.0, 17.0, 4.0, 7.0])
    assert user_min_gap_table(users, last_history, target, 4).tolist() == [1.0, 2.0, 1.0, 7.0]


# ------------------------------------------------------------------------------------ attention
def _attention_inputs(per_sample_tables, seed=1, batch=4, width=9, d=12, k=5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 4, 1, 6])
    times = torch.cumsum(torch.randint(0, 5, (batch, width), generator=g).double(), 1) * 30
    intervals = interval_matrix(times, lengths, min_nonzero_gap(times, lengths), k)
    # padded rows/cols of R are 0 by construction; scramble them to prove they do not matter
    real = history_mask(lengths, width)
    pad_pair = ~(real.unsqueeze(2) & real.unsqueeze(1))
    intervals = torch.where(pad_pair, torch.randint(0, k + 1, intervals.shape, generator=g), intervals)
    allowed = torch.tril(torch.ones(width, width, dtype=torch.bool)).unsqueeze(0) & real.unsqueeze(1)
    rand = lambda *shape: torch.randn(*shape, generator=g, requires_grad=True)  # noqa: E731
    tables = (batch, k + 1, d) if per_sample_tables else (k + 1, d)
    return dict(
        query=rand(batch, width, d), key=rand(batch, width, d), value=rand(batch, width, d),
        pos_key=rand(batch, width, d), pos_value=rand(batch, width, d),
        interval_key=rand(*tables), interval_value=rand(*tables),
        intervals=intervals, allowed=allowed, real=real,
    )


def _naive(inputs, n_heads):
    ik, iv, r = inputs["interval_key"], inputs["interval_value"], inputs["intervals"]
    if ik.dim() == 2:
        pk, pv = pair_embeddings(r, ik), pair_embeddings(r, iv)
    else:  # per-sample tables: row b of R indexes table b
        pk = torch.stack([F.embedding(r[b], ik[b]) for b in range(r.shape[0])])
        pv = torch.stack([F.embedding(r[b], iv[b]) for b in range(r.shape[0])])
    return naive_interval_attention(
        inputs["query"], inputs["key"], inputs["value"], inputs["pos_key"], inputs["pos_value"], pk, pv,
        inputs["allowed"], n_heads,
    )


@pytest.mark.parametrize("per_sample_tables", [False, True])
@pytest.mark.parametrize("n_heads", [1, 3])
def test_bucketed_attention_matches_naive(per_sample_tables, n_heads):
    inputs = _attention_inputs(per_sample_tables)
    fast = bucketed_interval_attention(
        *(inputs[k] for k in ("query", "key", "value", "pos_key", "pos_value", "interval_key", "interval_value",
                              "intervals", "allowed")),
        n_heads,
    )
    slow = _naive(inputs, n_heads)
    real = inputs["real"]
    assert (fast - slow)[real].abs().max().item() <= 1e-5
    # gradients agree too (the backward of gather / scatter_add vs the per-pair tensors)
    leaves = [inputs[k] for k in ("query", "key", "interval_key", "interval_value", "pos_value")]
    weight = torch.randn(fast.shape, generator=torch.Generator().manual_seed(3)) * real.unsqueeze(-1)
    g_fast = torch.autograd.grad((fast * weight).sum(), leaves)
    g_slow = torch.autograd.grad((slow * weight).sum(), leaves)
    for a, b in zip(g_fast, g_slow):
        assert (a - b).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------ model
def _reference_official_forward(model, items, lengths, times):
    """Independent re-statement of the official (TF/pmixer) forward pass on LEFT-padded windows:
    slots 0..L-1, pads on the left, per-pair interval embeddings, keys masked with -2^32+1 (TF), padded
    rows zeroed after each block. Intervals from plain Python floats. Returns F at the last slot."""
    batch, width = items.shape
    L, d, h, k = model.max_seq_length, model.hidden_size, model.n_heads, model.time_span
    dh = d // h
    left = torch.zeros(batch, L, dtype=torch.long)
    rel = torch.zeros(batch, L, L, dtype=torch.long)
    for b in range(batch):
        n = int(lengths[b])
        left[b, L - n:] = items[b, :n]
        t = [float(x) for x in times[b, :n].double()]
        gaps = [abs(t[i + 1] - t[i]) for i in range(n - 1) if t[i + 1] != t[i]]
        r = min(gaps) if gaps else 1.0
        for i in range(n):
            for j in range(n):
                rel[b, L - n + i, L - n + j] = min(int(math.floor(abs(t[i] - t[j]) / r)), k)
    pad = left == 0
    seqs = model.item_embedding(left) * d**0.5
    seqs = seqs * ~pad.unsqueeze(-1)
    slots = torch.arange(L)
    abs_k, abs_v = model.position_key_embedding(slots), model.position_value_embedding(slots)
    time_k, time_v = model.interval_key_embedding(rel), model.interval_value_embedding(rel)
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
    for block in model.blocks:
        att = block.attention
        Q = block.attention_layernorm(seqs)
        q, kk, v = att.query(Q), att.key(seqs), att.value(seqs)
        heads = []
        for hd in range(h):
            sl = slice(hd * dh, (hd + 1) * dh)
            qh = q[..., sl]
            s = qh @ kk[..., sl].transpose(1, 2) + qh @ abs_k[:, sl].t()
            s = s + torch.einsum("bid,bijd->bij", qh, time_k[..., sl])
            s = s / dh**0.5
            keep = causal.unsqueeze(0) & ~pad.unsqueeze(1)
            s = s.masked_fill(~keep, -(2.0**32) + 1)
            a = torch.softmax(s, -1)
            heads.append(a @ v[..., sl] + a @ abs_v[:, sl] + torch.einsum("bij,bijd->bid", a, time_v[..., sl]))
        seqs = Q + torch.cat(heads, -1)
        x = block.forward_layernorm(seqs)
        ffn = block.feed_forward
        seqs = x + ffn.fc2(torch.relu(ffn.fc1(x)))
        seqs = seqs * ~pad.unsqueeze(-1)
    return model.last_layernorm(seqs)[:, -1]


def _interaction(items, lengths, times):
    return {"item_id_list": items, "item_length": lengths, "timestamp_list": times}


@torch.no_grad()
def test_model_matches_reference_official_forward():
    model = _model().eval()
    items, lengths, times = _batch()
    ours = model._user_representation(_interaction(items, lengths, times))
    ref = _reference_official_forward(model, items, lengths, times)
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "overrides,train",
    [({}, False), ({"n_layers": 1}, False), ({"interval_dropout": "pair"}, True), ({"interval_mask": "used"}, True),
     ({"interval_mask": "table"}, True)],
    ids=["eval", "one_block", "pair_train", "used_train", "table_train"],
)
def test_last_block_rows_match_the_full_forward(monkeypatch, overrides, train):
    """The user representation computes the last block at row n - 1 only: the same values and loss
    gradients as the full forward gathered at n - 1 (float64).  Training variants run with dropout made the
    identity, so each interval-dropout layout's own path (per-pair tensors, used or full tables) is the one
    compared."""
    if train:
        monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    model = _model(**overrides).double().train(train)
    items, lengths, times = _batch()
    rows = torch.arange(items.shape[0])
    target = torch.randint(1, 30, (items.shape[0],), generator=torch.Generator().manual_seed(2))
    results = []
    for rep in (lambda: model(items, lengths, times)[rows, lengths - 1],
                lambda: model._user_representation(_interaction(items, lengths, times))):
        r = rep()
        loss = F.cross_entropy(r @ model.item_embedding.weight.T, target)
        params = [p for p in model.parameters()]
        results.append([r.detach()] + list(torch.autograd.grad(loss, params, allow_unused=True)))
    for want, got in zip(*results):
        if want is None:
            assert got is None or not got.abs().max()
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@torch.no_grad()
def test_real_positions_ignore_padding_content_and_the_future():
    model = _model().eval()
    items, lengths, times = _batch(seed=4)
    base = model(items, lengths, times)
    real = history_mask(lengths, items.shape[1])
    g = torch.Generator().manual_seed(9)
    noisy_items = torch.where(real, items, torch.randint(1, 30, items.shape, generator=g))
    noisy_times = torch.where(real, times, torch.rand(times.shape, generator=g) * PAD_GARBAGE_TIME)
    moved = model(noisy_items, lengths, noisy_times)
    assert (moved - base)[real].abs().max().item() <= 1e-6
    # changing the last real item's id never changes earlier positions (causality)
    later = items.clone()
    last = lengths - 1
    later[torch.arange(len(lengths)), last] = (later[torch.arange(len(lengths)), last] % 29) + 1
    out = model(later, lengths, times)
    earlier = history_mask(lengths - 1, items.shape[1])
    assert (out - base)[earlier].abs().max().item() <= 1e-6
    assert (out - base)[torch.arange(len(lengths)), last].abs().max().item() > 1e-4  # and the last one does


@torch.no_grad()
def test_time_span_zero_is_the_time_blind_twin():
    """time_span 0: every pair falls in bucket 0, so the output no longer depends on the timestamps (and the
    same weights with k > 0 do depend on them: the check can fail)."""
    items, lengths, times = _batch(seed=2)
    stretched = times.double() * 1.0 + torch.cumsum(torch.full(times.shape, 3600.0, dtype=torch.float64), 1)
    stretched = stretched.masked_fill(times == 0, 0.0).float()
    for k, depends in ((0, False), (6, True)):
        model = _model(time_span=k).eval()
        with torch.no_grad():  # the same non-zero weights in both interval rows that k = 0 has
            model.interval_key_embedding.weight.normal_(0.0, 0.5)
            model.interval_value_embedding.weight.normal_(0.0, 0.5)
        assert model.interval_key_embedding.weight.shape[0] == k + 1
        diff = (model(items, lengths, times) - model(items, lengths, stretched)).abs().max().item()
        assert (diff > 1e-4) == depends, (k, diff)


def test_interval_matrix_equals_the_out_of_place_formula():
    """The in-place computation is the formula itself, bit for bit (incl. huge gaps clipped before the cast)."""
    g = torch.Generator().manual_seed(8)
    gaps = torch.randint(0, 90_000, (6, 40), generator=g).double()
    gaps[0] *= 1e9  # would overflow int64 if cast before clipping
    times = (1.0e9 + torch.cumsum(gaps, 1)).float()
    lengths = torch.tensor([40, 1, 17, 3, 39, 25])
    divisor = min_nonzero_gap(times, lengths)
    t = times.double()
    want = torch.floor((t.unsqueeze(2) - t.unsqueeze(1)).abs() / divisor.view(-1, 1, 1)).clamp(0, 256).long()
    real = history_mask(lengths, 40)
    want = want.masked_fill(~(real.unsqueeze(2) & real.unsqueeze(1)), 0)
    assert torch.equal(interval_matrix(times, lengths, divisor, 256), want)


def test_used_buckets_renumbers_each_sample():
    g = torch.Generator().manual_seed(5)
    intervals = torch.randint(0, 7, (4, 6, 6), generator=g)
    intervals[1] = 3  # a sample using one bucket only
    intervals[2, :, :] = torch.tensor([0, 6]).repeat(18).view(6, 6)  # the two extreme buckets
    compact, rows = used_buckets(intervals, 7, renumber_below=1.01)  # always renumber
    width = max(len(torch.unique(intervals[b])) for b in range(4))
    assert rows.shape == (4, width) and compact.dtype == torch.int64
    for b in range(4):
        used = torch.unique(intervals[b])  # sorted
        assert torch.equal(rows[b, : len(used)], used)  # increasing bucket order, then padding
        assert torch.equal(compact[b].unique(), torch.arange(len(used)))
    assert torch.equal(rows.gather(1, compact.flatten(1)).view_as(intervals), intervals)
    # a batch using (nearly) every bucket keeps the full tables: nothing to renumber
    assert width == 7
    same, rows = used_buckets(intervals, 7)
    assert same is intervals and rows is None
    fewer = intervals.clamp(max=2)
    compact, rows = used_buckets(fewer, 7)
    assert rows.shape == (4, 3) and torch.equal(rows.gather(1, compact.flatten(1)).view_as(fewer), fewer)


def _same_mask_dropout(seed):
    """Dropout whose mask on a [B, rows, d] table is a fixed function of (sample, bucket, channel):
    lets the "used" and "table" interval masks be compared exactly."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(5, 64, 12, generator=g) > 0.3).float() / 0.7  # [B, bucket, channel]


@pytest.mark.parametrize("renumber_below", [1.01, 0.0])  # always renumber / never (full per-sample tables)
def test_interval_mask_used_equals_table_given_the_same_masks(monkeypatch, renumber_below):
    """With the same per-(sample, bucket, channel) mask, drawing it for the used buckets only gives exactly
    the "table" outputs and gradients: only the random stream differs."""
    import recbole_timeplug.model.sequential_recommender.tisasrec as tis

    items, lengths, times = _batch(seed=2)
    inter = dict(_interaction(items, lengths, times), item_id=torch.randint(1, 30, (5,)))
    mask = _same_mask_dropout(1)
    results = {}
    for mode in ("used", "table"):
        model = _model(interval_mask=mode, dropout_prob=0.3).train()
        for block in model.blocks:  # keep the interval-table dropout the only random part
            block.attention.attn_dropout.p = 0.0
            block.feed_forward.dropout.p = 0.0
        captured = {}

        def recording_used_buckets(intervals, n_buckets):
            captured["compact"], captured["rows"] = used_buckets(intervals, n_buckets, renumber_below)
            return captured["compact"], captured["rows"]

        class SameMaskDropout(torch.nn.Module):
            def forward(self, x):
                if x.shape[1] == items.shape[1]:  # items, positions [B, L, d]: no dropout (k+1 = 7 < L = 8)
                    return x
                if mode == "table":  # [B, k+1, d]
                    return x * mask[:, : x.shape[1]]
                if captured["rows"] is None:  # full tables
                    return x * mask[:, : x.shape[1]]
                return x * mask.gather(1, captured["rows"].unsqueeze(-1).expand(-1, -1, x.shape[2]))

        monkeypatch.setattr(tis, "used_buckets", recording_used_buckets)
        model.emb_dropout = SameMaskDropout()
        loss = model.calculate_loss(inter)
        loss.backward()
        monkeypatch.undo()
        assert ("rows" in captured) == (mode == "used")
        if mode == "used":  # renumbered to fewer rows than k+1, or kept whole (rows None)
            assert (captured["rows"] is None) == (renumber_below == 0.0)
            assert renumber_below == 0.0 or captured["rows"].shape[1] < model.time_span + 1
        results[mode] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    assert (results["used"][0] - results["table"][0]).abs().item() <= 1e-6
    for a, b in zip(results["used"][1], results["table"][1]):
        assert (a - b).abs().max().item() <= 1e-5


def test_training_paths_run_and_pad_row_stays_zero():
    for mode, mask in (("bucket", "used"), ("bucket", "table"), ("pair", "used")):
        model = _model(interval_dropout=mode, interval_mask=mask).train()
        items, lengths, times = _batch()
        inter = dict(_interaction(items, lengths, times), item_id=torch.randint(1, 30, (5,)))
        loss = model.calculate_loss(inter)
        loss.backward()
        assert torch.isfinite(loss) and model.item_embedding.weight.grad[0].abs().max().item() == 0.0


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("time_scale", "user_min", "time_scale"),
        ("n_heads", 5, "n_heads"),
        ("interval_dropout", "cell", "interval_dropout"),
        ("interval_mask", "all", "interval_mask"),
        ("interval_mask", None, "interval_mask"),
        ("time_span", -1, "time_span"),
        ("loss_type", "BPR", "train_neg_sample_args"),
    ],
)
def test_bad_config_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        _model(**{key: value})


# ------------------------------------------------------------------------------------ end to end
def test_user_min_train_matches_the_raw_file(tiny_config):
    """r_u per user from the training split, against pandas on the raw .inter file."""
    import pandas as pd
    from recbole.data import create_dataset, data_preparation

    from recbole_timeplug.config import Config

    config = Config(
        model="TiSASRec", dataset=tiny_config["dataset"],
        config_dict=dict(tiny_config, model="TiSASRec", time_scale="user_min_train", hidden_size=8, n_layers=1),
    )
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = TiSASRec(config, train_data._dataset)

    raw = pd.read_csv(os.path.join(config["data_path"], "tiny.inter"), sep="\t")
    raw.columns = ["user_id", "item_id", "timestamp"]
    raw["timestamp"] = raw["timestamp"].astype(np.float64)  # the package keeps TIME_FIELD float64 (_compat)
    for user_token, rows in list(raw.groupby("user_id"))[:40]:
        t = np.sort(rows["timestamp"].to_numpy())[:-2]  # leave-one-out: drop valid and test
        gaps = np.diff(t)
        expected = gaps[gaps > 0].min() if (gaps > 0).any() else 1.0
        uid = dataset.token2id("user_id", str(user_token))
        assert model.user_min_gap[uid].item() == expected


def test_cli_trains_and_evaluates_on_ml100k(cli_config, run_cli, tmp_path):
    config = cli_config(
        "TiSASRec",
        train_batch_size=2048,
        eval_batch_size=4096,
        hidden_size=16,
        n_layers=1,
        n_heads=1,
        MAX_ITEM_LIST_LENGTH=20,
        time_span=32,
        user_inter_num_interval="[20,40]",  # the shorter histories of ml-100k keep this test fast
        load_col={"inter": ["user_id", "item_id", "timestamp"]},
        metrics=["Hit", "NDCG"],
    )
    proc = run_cli("run_recbole.py", *cli_args(config))
    out = proc.stdout + proc.stderr
    test = printed_metrics(out)
    assert 0.0 < test["hit@10"] <= 1.0 and 0.0 < test["ndcg@10"] <= test["hit@10"]
    assert "time_scale = user_min_history" in out and "training [time" in out


def test_paper_protocol_preset_runs(tiny_config):
    """BCE with one sampled negative, uni100 evaluation, user_min_train - through the preset file."""
    from recbole_timeplug.quick_start import run_recbole

    preset = os.path.join(REPO, "configs", "tisasrec_paper_protocol.yaml")
    protocol_keys = ("metrics", "topk", "valid_metric")  # the preset's, not the fixture's
    overrides = {k: v for k, v in tiny_config.items() if k not in protocol_keys}
    overrides.update(model="TiSASRec", epochs=2, hidden_size=8, n_layers=1, train_batch_size=256)
    result = run_recbole(model="TiSASRec", config_file_list=[preset], config_dict=overrides)
    assert set(result["test_result"]) == {"hit@10", "ndcg@10"}
    # with 101 candidates a trained model is far above chance (10/101) on this skewed data
    print("PAPER", result["test_result"])
    assert result["test_result"]["hit@10"] > 0.1


@pytest.mark.parametrize("preset,length", [("tisasrec_ml-1m.yaml", 200), ("tisasrec_amazon.yaml", 50)])
def test_dataset_presets(preset, length):
    import yaml

    with open(os.path.join(REPO, "configs", preset), encoding="utf-8") as f:
        values = yaml.safe_load(f)
    assert values["MAX_ITEM_LIST_LENGTH"] == length and values["time_span"] == 256
    assert "timestamp" in values["load_col"]["inter"]
