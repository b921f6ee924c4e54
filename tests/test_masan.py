"""MASAN and its alpha-entmax layers, each checked against an independent reference.

References used: the ``entmax`` package (``entmax_bisect`` at 100 float64 steps, exact ``entmax15`` /
``sparsemax``), finite differences (gradcheck), RecBole 1.2.1's own ``LightSANs``, a per-sequence loop
implementation of one masked adaptive layer written from the equations of docs/models.md §3.2-§3.3, and
the parameter counts printed in MASAN's training logs (github.com/JXY66/MASAN; docs/models.md §3.1).
"""

import math
import re

import pytest
import torch
from entmax import entmax15, entmax_bisect, sparsemax
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.lightsans import LightSANs

from conftest import cli_args, printed_metrics
from recbole_timeplug.config import Config
from recbole_timeplug.layers.sparse_attention import (
    alpha_entmax,
    entmax_newton,
    newton_threshold,
    pool_context,
    sequence_adaptive_alpha,
)
from recbole_timeplug.model.sequential_recommender.masan import MASAN
from recbole_timeplug.testing import ItemCountDataset


def _Data(n_items, n_users=50):
    return ItemCountDataset(n_items, n_users)


TINY = {"hidden_size": 16, "inner_size": 32, "n_layers": 2, "n_heads": 2, "k_interests": 3, "MAX_ITEM_LIST_LENGTH": 8}


def _config(model="MASAN", **overrides):
    return Config(model=model, dataset="ml-100k", config_dict={**TINY, "device": "cpu", **overrides})


def _batch(batch=6, seq_len=8, n_items=40, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths) if lengths is not None else torch.randint(1, seq_len + 1, (batch,), generator=g)
    seq = torch.randint(1, n_items, (len(lengths), seq_len), generator=g)
    seq[torch.arange(seq_len).unsqueeze(0) >= lengths.unsqueeze(1)] = 0  # RecBole's right padding
    return Interaction(
        {
            "item_id_list": seq,
            "item_length": lengths,
            "item_id": torch.randint(1, n_items, (len(lengths),), generator=g),
            "user_id": torch.randint(1, 50, (len(lengths),), generator=g),
        }
    )


# ------------------------------------------------------------------------------------ alpha-entmax
def _scores(shape, seed, scale=2.0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])
def test_newton_matches_bisection_reference_per_row_alpha(scale):
    X = _scores((5, 2, 30, 4), seed=1, scale=scale)
    X[:, :, 20:, :] = float("-inf")  # padded query rows along the normalised axis
    alpha = 1 + torch.rand(5, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    alpha[0] = 2.0
    alpha[1] = 1.0001
    ref = entmax_bisect(X, alpha, dim=-2, n_iter=100)
    fast = entmax_newton(X, alpha, dim=-2, n_iter=30)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=0)
    # the shipped float32 defaults (10 Newton / 25 bisection steps) are at float32 resolution; at
    # alpha = 1 + 1e-4 the power 1/(alpha-1) = 1e4 amplifies float32 rounding for any method
    ref32 = entmax_bisect(X.float().double(), alpha.float().double(), dim=-2, n_iter=100)
    for impl in ("newton", "bisect"):
        out32 = alpha_entmax(X.float(), alpha.float(), dim=-2, impl=impl).double()
        torch.testing.assert_close(out32[alpha[:, 0, 0, 0] > 1.01], ref32[alpha[:, 0, 0, 0] > 1.01], atol=5e-6, rtol=0)
        torch.testing.assert_close(out32, ref32, atol=1e-4, rtol=0)


def _newton_fixed_steps_before_tol(X, alpha, dim, n_iter):
    """The Newton forward as it was before ``tol`` and the mask-free loop: fixed steps, torch.where masks."""
    am1 = alpha - 1
    z = X * am1
    z = z - z.amax(dim=dim, keepdim=True)
    power = 1.0 / am1
    tau = torch.full_like(z.narrow(dim, 0, 1), -1.0)
    for _ in range(n_iter):
        r = (z - tau).clamp_min(0)
        q = torch.where(r > 0, r.pow(power - 1.0), torch.zeros_like(r))
        f = (q * r).sum(dim=dim, keepdim=True) - 1.0
        tau = tau + f / (power * q.sum(dim=dim, keepdim=True)).clamp_min(torch.finfo(z.dtype).tiny)
    r = (z - tau).clamp_min(0)
    Y = torch.where(r > 0, r.pow(power), torch.zeros_like(r))
    return Y / Y.sum(dim=dim, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton_without_tol_is_bit_equal_to_the_fixed_step_loop(dtype):
    X = _scores((6, 2, 25, 5), seed=11, scale=3.0, dtype=dtype)
    X[:3, :, 18:, :] = float("-inf")
    alpha = (1 + torch.rand(6, 1, 1, 1, generator=torch.Generator().manual_seed(12))).to(dtype)
    alpha[0] = 2.0  # the 0^0 case
    weights = _scores((6, 2, 25, 5), seed=13, dtype=dtype)
    for n_iter in (1, 10):
        assert torch.equal(entmax_newton(X, alpha, -2, n_iter), _newton_fixed_steps_before_tol(X, alpha, -2, n_iter))
    # and the backward is the closed form (E2)/(E3) as written before, bit for bit
    x, a = X.clone().requires_grad_(), alpha.clone().requires_grad_()
    (entmax_newton(x, a, -2, 10) * weights).sum().backward()
    Y = _newton_fixed_steps_before_tol(X, alpha, -2, 10)
    support = Y > 0
    g = torch.where(support, Y.pow(2 - alpha), torch.zeros_like(Y))
    g_sum = g.sum(-2, keepdim=True)
    dX = weights * g
    dX = dX - g * (dX.sum(-2, keepdim=True) / g_sum)
    p_log_p = torch.where(support, Y * torch.log(torch.where(support, Y, torch.ones_like(Y))), torch.zeros_like(Y))
    g_tilde = g / g_sum
    am1 = alpha - 1
    d_alpha = weights * ((Y - g_tilde) / am1**2 - (p_log_p - g_tilde * p_log_p.sum(-2, keepdim=True)) / am1)
    assert torch.equal(x.grad, dX)
    assert torch.equal(a.grad, d_alpha.sum(-2, keepdim=True).sum_to_size(alpha.shape))


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0, 30.0])
def test_newton_early_exit_is_as_accurate_as_ten_steps(scale):
    """tol = 1e-6 (the MASAN default) stops after fewer than 10 steps in float32 and is as close to the
    float64 bisection reference as the fixed 10 steps; the step criterion also holds in float64."""
    g = torch.Generator().manual_seed(13)
    X = torch.randn(64, 2, 50, 20, generator=g) * scale
    X[:32, :, 37:, :] = float("-inf")  # padded query rows
    alpha = (1 + torch.rand(64, 1, 1, 1, generator=g)).clamp(1.0001, 2.0)
    alpha[:4] = 1.0001
    alpha[4:8] = 2.0
    ref = entmax_bisect(X.double(), alpha.double(), dim=-2, n_iter=100)
    am1 = alpha - 1
    z = X * am1
    z = z - z.amax(dim=-2, keepdim=True)
    _, steps = newton_threshold(z, 1.0 / am1, -2, 10, tol=1e-6)
    assert steps < 10
    fixed = entmax_newton(X, alpha, -2, 10)
    early = entmax_newton(X, alpha, -2, 10, 1e-6)
    err_fixed = (fixed.double() - ref).abs()
    err_early = (early.double() - ref).abs()
    ok = alpha[:, 0, 0, 0] > 1.01  # near alpha = 1 float32 rounding dominates for every method
    assert err_early[ok].max() <= max(2 * err_fixed[ok].max().item(), 5e-6)
    assert err_early.max() <= max(2 * err_fixed.max().item(), 1e-4)
    torch.testing.assert_close(early.sum(-2), torch.ones(64, 2, 20), atol=1e-5, rtol=0)
    assert (early[:32, :, 37:] == 0).all()
    # float64 with a tight tol: the bisection reference to 1e-10
    early64 = entmax_newton(X.double(), alpha.double(), -2, 30, 1e-9)
    torch.testing.assert_close(early64, ref, atol=1e-10, rtol=0)


def test_newton_early_exit_gradients_match_bisection():
    X = _scores((3, 2, 7, 3), seed=5)
    alpha = 1 + 0.9 * torch.rand(3, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    weights = _scores((3, 2, 7, 3), seed=7)
    grads = []
    for fn in (lambda x, a: entmax_bisect(x, a, dim=-2, n_iter=100), lambda x, a: entmax_newton(x, a, -2, 30, 1e-9)):
        x, a = X.clone().requires_grad_(), alpha.clone().requires_grad_()
        (fn(x, a) * weights).sum().backward()
        grads.append((x.grad, a.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-8, rtol=1e-6)


def test_entmax_closed_forms_at_alpha_1_5_and_2():
    X = _scores((4, 3, 12, 5), seed=3)
    X[:2, :, 9:, :] = float("-inf")  # masked pads must get 0 in every path
    for alpha, exact in ((1.5, entmax15), (2.0, sparsemax)):
        want = exact(X, dim=-2)
        for impl in ("newton", "bisect", "sort"):
            got = alpha_entmax(X, alpha, dim=-2, impl=impl, n_iter=60 if impl == "bisect" else None)
            torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="entmax_impl 'sort'"):
        alpha_entmax(X, 1.3, dim=-2, impl="sort")


def test_entmax_rows_sum_to_one_with_exact_zeros_and_zero_on_masked_entries():
    X = _scores((8, 2, 20, 6), seed=4, dtype=torch.float32)
    X[:4, :, 11:, :] = float("-inf")
    alpha = torch.full((8, 1, 1, 1), 1.5)
    for impl in ("newton", "bisect"):
        P = alpha_entmax(X, alpha, dim=-2, impl=impl)
        assert torch.isfinite(P).all()
        torch.testing.assert_close(P.sum(-2), torch.ones(8, 2, 6), atol=1e-5, rtol=0)
        assert (P[:4, :, 11:, :] == 0).all()
        assert (P == 0).float().mean() > 0.2  # sparse: many exact zeros at alpha 1.5


def test_newton_gradients_match_bisection_and_finite_differences():
    X = _scores((3, 2, 7, 3), seed=5)
    alpha = 1 + 0.9 * torch.rand(3, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    weights = _scores((3, 2, 7, 3), seed=7)
    grads = []
    for fn in (lambda x, a: entmax_bisect(x, a, dim=-2, n_iter=100), lambda x, a: entmax_newton(x, a, -2, 30)):
        x, a = X.clone().requires_grad_(), alpha.clone().requires_grad_()
        (fn(x, a) * weights).sum().backward()
        grads.append((x.grad, a.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-8, rtol=1e-6)
    assert grads[1][1].shape == alpha.shape and grads[1][1].abs().sum() > 0
    torch.autograd.gradcheck(
        lambda x, a: entmax_newton(x, a, -2, 40),
        (X.clone().requires_grad_(), alpha.clone().requires_grad_()),
        eps=1e-7,
        atol=1e-5,
    )


def test_adaptive_alpha_range_and_guard():
    logits = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4])
    alpha = sequence_adaptive_alpha(logits, alpha_min=1.0001)
    assert (alpha > 1).all() and (alpha <= 2).all()
    assert alpha[0] == pytest.approx(1.0001) and alpha[2] == pytest.approx(1.5) and alpha[-1] == 2.0


def test_alpha_pool_reads_last_real_item_never_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    lengths = torch.tensor([2, 4])
    assert torch.equal(pool_context(hidden, lengths, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(pool_context(hidden, lengths, "mean"), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))


# ---------------------------------------------------------------------------------------- the model
def test_softmax_mode_is_recbole_lightsans_module_for_module():
    overrides = {"alpha_mode": "softmax", "mask_padding": False, "extra_position_row": False}
    torch.manual_seed(0)
    light = LightSANs(_config("LightSANs"), _Data(40))
    masan = MASAN(_config(**overrides), _Data(40))
    assert set(light.state_dict()) == set(masan.state_dict())
    masan.load_state_dict(light.state_dict())  # strict: same names and shapes
    batch = _batch()
    light.eval(), masan.eval()
    torch.testing.assert_close(masan.full_sort_predict(batch), light.full_sort_predict(batch), atol=1e-6, rtol=1e-6)
    # training mode: same dropout draws in the same order give the same loss
    light.train(), masan.train()
    torch.manual_seed(1)
    want = light.calculate_loss(batch)
    torch.manual_seed(1)
    torch.testing.assert_close(masan.calculate_loss(batch), want)
    # and the other way round, from MASAN's weights
    light2 = LightSANs(_config("LightSANs"), _Data(40))
    light2.load_state_dict(MASAN(_config(**overrides), _Data(40)).state_dict())


def _naive_masked_layer(att, H, lengths, pos_emb):
    """One adaptive MASAN attention layer (mask_padding on, alpha_pool last), one sequence at a time,
    on the real items only, written from docs/models.md §3.2-§3.3."""
    B, L, d = H.shape
    h, dh = att.num_attention_heads, att.attention_head_size
    P = att.pos_ln(pos_emb)
    pq = att.pos_q_linear(P).view(L, h, dh).transpose(0, 1) / math.sqrt(2 * dh)
    pk = att.pos_k_linear(P).view(L, h, dh).transpose(0, 1)
    G = torch.softmax(pq @ pk.transpose(-1, -2) / math.sqrt(dh), dim=-2)  # [h, L, L], not masked
    out = []
    for b in range(B):
        n = int(lengths[b])
        x = H[b]
        alpha = 1 + torch.sigmoid(att.alpha_w(x[n - 1]))  # last real item
        Q, K, V = att.query(x), att.key(x), att.value(x)
        K_tilde = torch.softmax(K[:n] @ att.attpooling_key.theta, dim=0).T @ K[:n]  # [k, d]
        V_tilde = torch.softmax(V[:n] @ att.attpooling_value.theta, dim=0).T @ V[:n]
        context = torch.zeros(L, d, dtype=H.dtype)
        for head in range(h):
            cols = slice(head * dh, (head + 1) * dh)
            S = Q[:n, cols] @ K_tilde[:, cols].T / math.sqrt(dh)  # [n, k]
            A = entmax_bisect(S, alpha, dim=0, n_iter=100)
            context[:n, cols] += A @ V_tilde[:, cols]
            context[:, cols] += G[head] @ V[:, cols]
        out.append(att.LayerNorm(att.dense(context) + x))
    return torch.stack(out)


def test_masked_adaptive_layer_matches_per_sequence_reference():
    model = MASAN(_config(hidden_dropout_prob=0.0, attn_dropout_prob=0.0), _Data(40)).double().eval()
    att = model.trm_encoder.layer[0].multi_head_attention
    with torch.no_grad():
        att.alpha_w.weight.normal_(0, 1.0)  # spread alpha over (1, 2)
        att.alpha_w.bias.fill_(0.3)
    lengths = torch.tensor([1, 3, 8, 5])
    H = torch.randn(4, 8, 16, dtype=torch.float64)
    pos_emb = model.position_embedding.weight[:8]
    got = att(H, pos_emb, lengths)
    torch.testing.assert_close(got, _naive_masked_layer(att, H, lengths, pos_emb), atol=1e-8, rtol=1e-7)
    assert (att.last_alpha > 1).all() and (att.last_alpha <= 2).all() and att.last_alpha.std() > 0.01


def test_alpha_gradient_reaches_alpha_w_and_fast_path_equals_bisection():
    batch = _batch(lengths=[1, 2, 8, 5, 3, 8])
    results = {}
    for impl, n_iter in (("newton", {}), ("bisect", {"entmax_n_iter": 60})):
        torch.manual_seed(0)
        model = MASAN(_config(entmax_impl=impl, hidden_dropout_prob=0.0, attn_dropout_prob=0.0, **n_iter), _Data(40))
        loss = model.calculate_loss(batch)
        loss.backward()
        layers = [layer.multi_head_attention for layer in model.trm_encoder.layer]
        for att in layers:
            assert ((att.last_alpha > 1) & (att.last_alpha <= 2)).all()
            assert torch.isfinite(att.alpha_w.weight.grad).all() and att.alpha_w.weight.grad.abs().sum() > 0
        results[impl] = (loss.detach(), [att.alpha_w.weight.grad for att in layers])
    torch.testing.assert_close(results["newton"][0], results["bisect"][0], atol=1e-5, rtol=1e-5)
    for fast, ref in zip(results["newton"][1], results["bisect"][1]):
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"alpha_pool": "mean", "entmax_dim": -1},
        {"alpha_mode": "fixed", "entmax_impl": "sort", "entmax_on_aggregation": True},
        {"entmax_on_aggregation": True, "entmax_on_position": True, "pos_index_mode": "padded"},
        {"use_user_pref": True, "loss_type": "BPR"},
    ],
)
def test_no_nan_with_padded_inputs(overrides):
    torch.manual_seed(0)
    model = MASAN(_config(**overrides), _Data(40))
    batch = _batch(lengths=[1, 2, 8, 5, 1, 7])
    batch.update(Interaction({"neg_item_id": torch.randint(1, 40, (6,))}))
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    assert torch.isfinite(model.full_sort_predict(batch)).all()
    assert torch.isfinite(model.predict(batch)).all()


def test_padded_position_ids():
    model = MASAN(_config(pos_index_mode="padded"), _Data(40))
    seq = torch.tensor([[5, 6, 0, 0], [1, 2, 3, 4]])
    got = model.position_embeddings(seq, torch.tensor([2, 4]))
    table = model.position_embedding.weight
    torch.testing.assert_close(got[0], table[[1, 2, 0, 0]])
    torch.testing.assert_close(got[1], table[[1, 2, 3, 4]])


@pytest.mark.parametrize(
    "hidden, layers, k, expected",  # every row of the MASAN log table (Amazon-Books: 60,707 items, L 150)
    [(32, 1, 40, 1_973_313), (32, 2, 20, 1_996_546), (32, 2, 25, 1_997_186), (64, 2, 20, 4_017_154),
     (32, 2, 10, 1_995_266), (32, 3, 20, 2_021_059)],
)
def test_parameter_count_of_the_logged_configurations(hidden, layers, k, expected):
    config = _config(hidden_size=hidden, n_layers=layers, k_interests=k, inner_size=256, MAX_ITEM_LIST_LENGTH=150)
    model = MASAN(config, _Data(60_707))
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"alpha_mode": "sparse"}, "alpha_mode"),
        ({"alpha_mode": "fixed", "entmax_alpha": 1.0}, "entmax_alpha"),
        ({"entmax_impl": "sort"}, "entmax_impl"),
        ({"alpha_pool": "final"}, "alpha_pool"),
        ({"pos_index_mode": "padded", "extra_position_row": False}, "extra_position_row"),
        ({"alpha_min": 1.0}, "alpha_min"),
        ({"entmax_dim": 1}, "entmax_dim"),
        ({"entmax_newton_tol": -1e-6}, "entmax_newton_tol"),
    ],
)
def test_bad_config_values_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=re.escape(f"`{key}`")):
        MASAN(_config(**overrides), _Data(40))


def test_cli_trains_and_evaluates_on_ml100k(cli_config, run_cli, tmp_path):
    config = cli_config(
        "MASAN",
        hidden_size=16,
        inner_size=32,
        n_layers=1,
        n_heads=2,
        k_interests=4,
        MAX_ITEM_LIST_LENGTH=20,
        user_inter_num_interval="[20,40]",  # the shorter histories of ml-100k keep this test fast
        train_batch_size=2048,
        eval_batch_size=4096,
    )
    out = run_cli("run_recbole.py", *cli_args(config))
    text = out.stdout + out.stderr
    metrics = printed_metrics(text)
    assert set(metrics) == {"hit@10", "ndcg@10", "mrr@10"}
    assert 0 <= metrics["mrr@10"] <= metrics["ndcg@10"] <= metrics["hit@10"] <= 1
    assert re.search(r"alpha_w\): Linear\(in_features=16, out_features=1", text)
