"""TiM4Rec and its SSD scan (layers/ssd.py), on CPU.

Independent references: the step-by-step recurrence and the quadratic (dual) form of the SSD, and a
functional float64 re-implementation of the model written from the equations of docs/models.md §2.2 that
shares only the weights with the module under test.
"""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import cli_args, printed_metrics
from recbole_timeplug.layers import ssd
from recbole_timeplug.layers.ssd import SSDBackendError, softplus_dt, ssd_chunked, ssd_last, ssd_naive, ssd_scan
from recbole_timeplug.model.sequential_recommender.tim4rec import TiM4Rec, TiM4RecConfigError, TiSSD
from recbole_timeplug.testing import ItemCountDataset, standalone_config

# ------------------------------------------------------------------------------------------- helpers


def _ssd_inputs(batch=2, length=37, nheads=4, headdim=3, ngroups=1, dstate=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, nheads, headdim, generator=g, dtype=dtype)
    dt = torch.randn(batch, length, nheads, generator=g, dtype=dtype)
    A = -torch.exp(torch.rand(nheads, generator=g, dtype=dtype) * 2)
    B = torch.randn(batch, length, ngroups, dstate, generator=g, dtype=dtype)
    C = torch.randn(batch, length, ngroups, dstate, generator=g, dtype=dtype)
    D = torch.randn(nheads, generator=g, dtype=dtype)
    dt_bias = torch.randn(nheads, generator=g, dtype=dtype)
    return x, dt, A, B, C, D, dt_bias


def _dual_form(x, delta, A, B, C, D):
    """y_i = sum_{j<=i} (C_i.B_j) exp(A sum_{m=j+1..i} delta_m) delta_j x_j + D x_i, by explicit sums."""
    batch, length, nheads, _ = x.shape
    rep = nheads // B.shape[2]
    y = torch.zeros_like(x)
    cums = torch.cumsum(delta, dim=1)  # (b, L, H)
    for h in range(nheads):
        bc = torch.einsum("bin,bjn->bij", C[:, :, h // rep], B[:, :, h // rep])
        seg = cums[:, :, None, h] - cums[:, None, :, h]  # sum_{m=j+1..i}
        mask = torch.ones(length, length, dtype=torch.bool).tril()
        kernel = torch.where(mask, bc * torch.exp(A[h] * seg.clamp(min=0)), torch.zeros_like(bc))
        y[:, :, h] = torch.einsum("bij,bjp->bip", kernel * delta[:, None, :, h], x[:, :, h])
    return y + D[:, None] * x


def _config(**overrides):
    cfg = {
        "MAX_ITEM_LIST_LENGTH": 13,
        "device": "cpu",
        "loss_type": "CE",
        "hidden_size": 16,
        "num_layers": 2,
        "dropout_prob": 0.2,
        "time_drop_out": 0.2,
        "d_state": 6,
        "d_conv": 4,
        "expand": 2,
        "head_dim": 8,
        "chunk_size": 5,
        "norm_eps": 1e-12,
        "is_time": True,
        "is_ffn": True,
        "p2p_residual": False,
        "is_kai_ming_init": True,
        "conv_activation": "hardswish",
        "time_mask_padding": False,
        "time_transform": "raw",
        "ssd_backend": "auto",
    }
    cfg.update(overrides)
    return standalone_config(**cfg)


def _model(n_items=30, seed=0, **overrides):
    torch.manual_seed(seed)
    return TiM4Rec(_config(**overrides), ItemCountDataset(n_items))


def _batch(model, batch=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    L = model.max_seq_length
    lengths = torch.tensor([1, 4, L, 7, L - 1][:batch])
    seq = torch.randint(1, model.n_items, (batch, L), generator=g)
    times = 1.0e9 + torch.cumsum(torch.randint(0, 200_000, (batch, L), generator=g).double(), dim=1)
    pos = torch.arange(L)[None, :]
    seq = torch.where(pos < lengths[:, None], seq, torch.zeros_like(seq))  # RecBole: right padding with 0
    times = torch.where(pos < lengths[:, None], times, torch.zeros_like(times)).float()  # float32 like RecBole
    return seq, lengths, times


def _reference_encode(model, seq, lengths, times):
    """Spec section 2.3 from scratch, float64, eval mode (dropout off), reading only the state dict."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    d, L = model.hidden_size, model.max_seq_length
    H, P, N, k, eps = model.nheads, model.head_dim, model.d_state, model.d_conv, model.norm_eps
    d_in = model.expand * d
    act = F.hardswish if model.conv_activation == "hardswish" else F.silu
    masked = model.time_mask_padding
    valid = (torch.arange(L)[None, :] < lengths[:, None]).double()  # (b, L)

    def ln(x, w, b, e, mask=None):
        if mask is None:
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + e) * w + b
        cnt = mask.sum(-1, keepdim=True)
        mu = (x * mask).sum(-1, keepdim=True) / cnt
        var = (((x - mu) * mask) ** 2).sum(-1, keepdim=True) / cnt
        return ((x - mu) / torch.sqrt(var + e) * w + b) * mask

    def conv(x, w, b):  # official formulation: symmetric padding k-1, keep the first L outputs
        return F.conv1d(x, w, b, padding=k - 1, groups=x.shape[1])[..., : x.shape[-1]]

    X = ln(sd["item_embedding.weight"][seq], sd["emb_norm.weight"], sd["emb_norm.bias"], eps)
    T = None
    if model.is_time:
        t = times.double()
        gaps = torch.zeros_like(t)
        gaps[:, 1:] = t[:, 1:] - t[:, :-1]
        if masked:
            gaps = gaps * valid
        if model.time_transform == "log":
            gaps = torch.where(gaps >= 0, torch.log(1 + gaps), -torch.log(1 - gaps))
        tau = ln(gaps, sd["time_norm.weight"], sd["time_norm.bias"], eps, valid if masked else None)
        T = tau[:, None, :].repeat(1, H, 1)
    for i in range(model.num_layers):
        p = f"layers.{i}."
        q = p + "tissd."
        proj = X @ sd[q + "in_proj.weight"].T + sd[q + "in_proj.bias"]
        z, xBC, dt = proj[..., :d_in], proj[..., d_in : 2 * d_in + 2 * N], proj[..., 2 * d_in + 2 * N :]
        xBC = act(conv(xBC.transpose(1, 2), sd[q + "conv1d.weight"], sd[q + "conv1d.bias"])).transpose(1, 2)
        if model.is_time:
            S = F.silu(T @ sd[q + "time_mlp.1.weight"].T + sd[q + "time_mlp.1.bias"])
            S = S @ sd[q + "time_mlp.3.weight"].T + sd[q + "time_mlp.3.bias"]
            U = T * S
            U = act(conv(U, sd[q + "time_conv1.weight"], sd[q + "time_conv1.bias"]))
            U = act(conv(U, sd[q + "time_conv2.weight"], sd[q + "time_conv2.bias"]))
            dt = dt * U.transpose(1, 2)
            G = torch.sigmoid(T @ sd[q + "time_gate.1.weight"].T + sd[q + "time_gate.1.bias"])
            T = ln(G * T + (1 - G) * U, sd[q + "time_norm.weight"], sd[q + "time_norm.bias"], eps,
                   valid[:, None, :] if masked else None)
        xs, Bm, Cm = xBC[..., :d_in], xBC[..., d_in : d_in + N], xBC[..., d_in + N :]
        delta = torch.log1p(torch.exp(dt + sd[q + "dt_bias"]))
        y = ssd_naive(xs.reshape(*xs.shape[:2], H, P), delta, -torch.exp(sd[q + "A_log"]),
                      Bm[:, :, None], Cm[:, :, None], sd[q + "D"]).reshape(*xs.shape[:2], d_in)
        g = y * F.silu(z)
        y = g / torch.sqrt((g**2).mean(-1, keepdim=True) + eps) * sd[q + "norm_weight"]
        O = y @ sd[q + "out_proj.weight"].T + sd[q + "out_proj.bias"]
        Hd = ln(O + X if model.num_layers > 1 else O, sd[p + "norm.weight"], sd[p + "norm.bias"], eps)
        if model.is_ffn:
            f = F.hardswish(Hd @ sd[p + "ffn.0.weight"].T + sd[p + "ffn.0.bias"])
            f = f @ sd[p + "ffn.3.weight"].T + sd[p + "ffn.3.bias"]
            Hd = ln(f + Hd, sd[p + "ffn_norm.weight"], sd[p + "ffn_norm.bias"], 1e-12)
        X = Hd
    return X


# ------------------------------------------------------------------------------------------ SSD scan


@pytest.mark.parametrize("length,chunk,ngroups", [(37, 8, 1), (37, 16, 2), (5, 8, 1), (32, 8, 1), (27, 16, 1)])
def test_torch_scan_matches_naive_recurrence_float64(length, chunk, ngroups):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(length=length, ngroups=ngroups)
    delta = torch.log1p(torch.exp(dt + dt_bias))  # softplus written out (no threshold reached here)
    expected = ssd_naive(x, delta, A, B, C, D)
    got = ssd_scan(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, backend="torch")
    assert got.dtype == torch.float64
    assert (got - expected).abs().max().item() <= 1e-10
    # and the recurrence itself against the quadratic (dual) form
    assert (expected - _dual_form(x, delta, A, B, C, D)).abs().max().item() <= 1e-10


def test_torch_scan_float32_and_large_steps_stay_finite():
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(length=45, dtype=torch.float32)
    dt = dt * 30  # softplus beyond its threshold, decays down to exp(-huge): no inf*0 NaNs
    x.requires_grad_(True)
    dt.requires_grad_(True)
    y = ssd_scan(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias, backend="torch")
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(dt.grad).all()
    expected = ssd_naive(x.double(), softplus_dt(dt.double(), dt_bias.double()), A.double(), B.double(),
                         C.double(), D.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch,channels,length,kernel", [(3, 5, 7, 4), (2, 4, 2, 4), (4, 6, 33, 3), (1, 2, 1, 1)])
def test_fast_causal_conv_backward_matches_autograd(batch, channels, length, kernel):
    """The hand-written CPU backward vs autograd of F.conv1d (float64), kernel longer than L included."""
    g = torch.Generator().manual_seed(batch * 100 + length)
    x = torch.randn(batch, channels, length, dtype=torch.float64, generator=g)
    w = torch.randn(channels, 1, kernel, dtype=torch.float64, generator=g)
    b = torch.randn(channels, dtype=torch.float64, generator=g)
    upstream = torch.randn(batch, channels, length, dtype=torch.float64, generator=g)
    grads = []
    for conv in (ssd.causal_depthwise_conv1d_reference, ssd.causal_depthwise_conv1d):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        out = conv(*leaves)
        (out * upstream).sum().backward()
        grads.append([out.detach()] + [t.grad for t in leaves])
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the fast path is the one that ran: its backward node, not ConvolutionBackward
    assert "CausalDepthwiseConv1dFn" in type(ssd.causal_depthwise_conv1d(x.requires_grad_(), w, b).grad_fn).__name__
    # weights only (inputs without gradient, as the time branch's first conv sees detached data)
    w2 = w.clone().requires_grad_()
    (ssd.causal_depthwise_conv1d(x.detach(), w2, b) * upstream).sum().backward()
    torch.testing.assert_close(w2.grad, grads[0][2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length,ngroups", [(37, 1), (37, 2), (1, 1), (300, 1)])
def test_last_row_scan_matches_naive_recurrence_float64(length, ngroups):
    """ssd_last = the recurrence's row last[b] (values and gradients), for first, middle and final rows."""
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(batch=4, length=length, ngroups=ngroups)
    last = torch.tensor([0, length // 2, length - 1, max(length - 2, 0)])
    rows = torch.arange(4)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D)]
    grads = []
    for path in ("naive", "last"):
        xx, dd, AA, BB, CC, DD = (t.clone() for t in leaves)
        delta = torch.log1p(torch.exp(dd + dt_bias))
        if path == "naive":
            y = ssd_naive(xx, delta, AA, BB, CC, DD)[rows, last]
        else:
            y = ssd_last(xx, delta, AA, BB, CC[rows, last], last, D=DD)
        upstream = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
        grads.append([y.detach()] + list(torch.autograd.grad((y * upstream).sum(), leaves)))
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # decay over hundreds of steps in float32 stays finite and close to the float64 recurrence
    if length == 300:
        x32, dt32, A32, B32, C32, D32 = (t.float() for t in (x, dt * 10, A, B, C, D))
        y32 = ssd_last(x32, softplus_dt(dt32, dt_bias.float()), A32, B32, C32[rows, last], last, D=D32)
        want = ssd_naive(x, softplus_dt(dt * 10, dt_bias), A, B, C, D)[rows, last]
        torch.testing.assert_close(y32.double(), want, rtol=1e-4, atol=1e-4)


def test_scan_is_causal():
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(length=29)
    n = 11
    y = ssd_chunked(x, softplus_dt(dt, dt_bias), A, B, C, 8, D=D)
    changed = [t.clone() for t in (x, dt, B, C)]
    for t in changed:
        t[:, n:] = torch.randn_like(t[:, n:]) * 5
    y2 = ssd_chunked(changed[0], softplus_dt(changed[1], dt_bias), A, changed[2], changed[3], 8, D=D)
    assert torch.equal(y[:, :n], y2[:, :n])
    assert not torch.allclose(y[:, n:], y2[:, n:])


# ------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    "overrides",
    [
        {"is_time": False},  # the SSD-only model (the authors' SSD4Rec* replica)
        {},  # official defaults: time-aware
        {"p2p_residual": True, "conv_activation": "silu", "num_layers": 1, "is_ffn": False},
        {"time_mask_padding": True},
        {"time_transform": "log"},  # the boundary gap -t_n stays in, log-scaled and negative
        {"time_transform": "log", "time_mask_padding": True},
    ],
    ids=["ssd_only", "time", "p2p_silu_1layer", "masked", "log_gaps", "log_gaps_masked"],
)
def test_model_matches_functional_reference(overrides):
    model = _model(**overrides).double().eval()
    seq, lengths, times = _batch(model)
    got = model.encode(seq, lengths, times)
    expected = _reference_encode(model, seq, lengths, times)
    assert (got - expected).abs().max().item() <= 1e-9
    if not model.is_time:
        assert not any("time" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize(
    "overrides",
    [{"is_time": False}, {}, {"p2p_residual": True, "conv_activation": "silu", "num_layers": 1, "is_ffn": False},
     {"time_mask_padding": True, "num_layers": 3}, {"chunk_size": 2, "time_transform": "log"}],
    ids=["ssd_only", "time", "p2p_silu_1layer", "masked_3layers", "chunks_log"],
)
def test_last_row_forward_matches_full_encoding(overrides):
    """forward() computes the last layer at row n - 1 only: the same r as the functional reference's row
    n - 1, and the same loss gradients as the full encoding gathered at n - 1 (eval mode, dropout off)."""
    model = _model(**overrides).double().eval()
    seq, lengths, times = _batch(model)
    rows = torch.arange(seq.shape[0])
    expected = _reference_encode(model, seq, lengths, times)[rows, lengths - 1]
    assert (model(seq, lengths, times) - expected).abs().max().item() <= 1e-9
    target = torch.randint(1, model.n_items, (seq.shape[0],), generator=torch.Generator().manual_seed(2))
    grads = []
    for r in (model.gather_indexes(model.encode(seq, lengths, times), lengths - 1), model(seq, lengths, times)):
        loss = F.cross_entropy(r @ model.item_embedding.weight.T, target)
        grads.append(dict(zip(dict(model.named_parameters()), torch.autograd.grad(loss, list(model.parameters()),
                                                                                   allow_unused=True))))
    for name, want in grads[0].items():
        got = grads[1][name]
        if want is None:  # the last layer's time-feature update feeds nothing, in either path
            assert got is None or not got.abs().max(), name
            continue
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=name)


def test_log_time_transform_hand_computed():
    """time_transform: log -> T0 = LN over L of sign(gap) log(1 + |gap|), boundary gap included (fresh LN: w 1, b 0)."""
    model = _model(time_transform="log").double().eval()
    L = model.max_seq_length
    t0, t1 = 1000.0, 1000.0 + (math.e - 1)
    t2 = t1 + (math.e**2 - 1)
    times = torch.zeros(1, L, dtype=torch.float64)
    times[0, :3] = torch.tensor([t0, t1, t2], dtype=torch.float64)
    gaps = [0.0, 1.0, 2.0, -math.log(1 + t2)] + [0.0] * (L - 4)  # by hand: log(e) = 1, log(e^2) = 2
    mean = sum(gaps) / L
    var = sum((g - mean) ** 2 for g in gaps) / L
    expected = torch.tensor([(g - mean) / math.sqrt(var + model.norm_eps) for g in gaps], dtype=torch.float64)
    got = model.time_feature(times, None)
    assert got.shape == (1, model.nheads, L)
    torch.testing.assert_close(got[0, 0], expected, rtol=0, atol=1e-12)
    raw = _model(time_transform="raw").double().eval().time_feature(times, None)[0, 0]
    assert (raw - expected).abs().max() > 0.1  # the official raw gaps are a different feature


def test_time_enters_only_through_dt(monkeypatch):
    """With the time factor U forced to 1, the time-aware model is the SSD-only model on shared weights."""
    timed = _model(seed=3).eval()
    plain = _model(seed=4, is_time=False).eval()
    missing = plain.load_state_dict(timed.state_dict(), strict=False)
    assert not missing.missing_keys and all("time" in k for k in missing.unexpected_keys)
    seq, lengths, times = _batch(timed)
    monkeypatch.setattr(TiSSD, "time_factor", lambda self, T, valid: (torch.ones_like(T), T))
    torch.testing.assert_close(timed.encode(seq, lengths, times), plain.encode(seq, lengths, None))
    monkeypatch.undo()
    assert not torch.allclose(timed.encode(seq, lengths, times), plain.encode(seq, lengths, None))


def test_model_causality_and_padding():
    # SSD-only model: hidden states before position n ignore every item from n on
    model = _model(is_time=False).eval()
    seq, lengths, times = _batch(model)
    n = 6
    altered = seq.clone()
    altered[:, n:] = torch.randint(1, model.n_items, altered[:, n:].shape)
    full = torch.full_like(lengths, model.max_seq_length)
    torch.testing.assert_close(model.encode(seq, full)[:, :n], model.encode(altered, full)[:, :n], rtol=0, atol=0)

    # time-aware model: the official time branch normalises over all L positions, so padding content
    # changes the time feature and dt's multiplier U at real positions (docs/models.md §2.4); time_mask_padding keeps
    # it out, down to the user representation r
    for masked in (False, True):
        model = _model(time_mask_padding=masked).eval()
        seq, lengths, times = _batch(model)
        pad = torch.arange(model.max_seq_length)[None, :] >= lengths[:, None]
        junk = torch.rand(times.shape, generator=torch.Generator().manual_seed(5)) * 2.0e9
        junk_times = torch.where(pad, junk, times)
        junk_items = torch.where(pad, torch.ones_like(seq), seq)
        valid = ~pad[:, None, :]
        mask = valid if masked else None
        T0, T0_junk = model.time_feature(times, mask), model.time_feature(junk_times, mask)
        U, _ = model.layers[0].tissd.time_factor(T0, mask)
        U_junk, _ = model.layers[0].tissd.time_factor(T0_junk, mask)
        real = valid.expand(-1, model.nheads, -1)
        if masked:
            torch.testing.assert_close(T0[real], T0_junk[real], rtol=0, atol=0)
            torch.testing.assert_close(U[real], U_junk[real], rtol=0, atol=1e-6)
            torch.testing.assert_close(model(seq, lengths, times), model(junk_items, lengths, junk_times),
                                       rtol=0, atol=1e-6)
        else:
            short = (lengths < model.max_seq_length)[:, None, None] & real
            assert (T0[short] - T0_junk[short]).abs().max() > 1e-2
            assert (U[short] - U_junk[short]).abs().max() > 1e-6


def test_training_step_gradients_finite_and_time_branch_trained():
    model = _model(time_drop_out=0.1).train()
    seq, lengths, times = _batch(model)
    interaction = {"item_id_list": seq, "item_length": lengths, "timestamp_list": times,
                   "item_id": torch.randint(1, model.n_items, (seq.shape[0],))}
    loss = model.calculate_loss(interaction)
    loss.backward()
    assert torch.isfinite(loss)
    last = f"layers.{model.num_layers - 1}.tissd.time_"
    for name, param in model.named_parameters():
        if name.startswith((last + "gate", last + "norm")):
            continue  # the last layer's time-feature update feeds nothing (as in the official code)
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.layers[0].tissd.time_mlp[1].weight.grad.abs().sum() > 0
    scores = model.full_sort_predict(interaction)
    assert scores.shape == (seq.shape[0], model.n_items)
    torch.testing.assert_close(model.eval().predict(interaction),
                               model.full_sort_predict(interaction).gather(1, interaction["item_id"][:, None])[:, 0])


def test_time_branch_stays_fp32_under_autocast():
    model = _model().eval()
    seq, lengths, times = _batch(model)
    with torch.no_grad():
        ref = model(seq, lengths, times)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            T = model.time_feature(times, None)
            U, T_next = model.layers[0].tissd.time_factor(T.bfloat16(), None)
            out = model(seq, lengths, times)
    assert T.dtype == U.dtype == T_next.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_time_field_comes_from_config():
    model = _model(TIME_FIELD="ts", LIST_SUFFIX="_seq")
    assert model.TIME_SEQ == "ts_seq"
    assert TiM4Rec.needs_fields == ("TIME_FIELD",)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"head_dim": 5}, "head_dim"),
        ({"conv_activation": "relu"}, "conv_activation"),
        ({"ssd_backend": "cuda"}, "ssd_backend"),
        ({"loss_type": "BPR"}, "loss_type"),
        ({"is_time": None}, "is_time"),
        ({"norm_eps": "tiny"}, "norm_eps"),
        ({"dropout_prob": 1.5}, "dropout_prob"),
    ],
)
def test_bad_config_values_are_clear_errors(overrides, match):
    with pytest.raises(TiM4RecConfigError, match=match):
        _model(**overrides)


# ------------------------------------------------------------------------------- backend selection


@pytest.fixture
def fresh_triton_state(monkeypatch):
    monkeypatch.setattr(ssd, "_TRITON_STATE", {"loaded": False, "ops": None, "error": None})


def test_auto_on_cpu_never_imports_mamba(monkeypatch, fresh_triton_state):
    monkeypatch.setattr(ssd, "load_mamba_triton", lambda *a, **k: pytest.fail("tried to import mamba-ssm"))
    assert ssd.resolve_ssd_backend("auto", "cpu") == "torch"
    assert ssd.resolve_ssd_backend("torch", "cuda") == "torch"
    chosen, line = ssd.describe_backend_choice("auto", "cpu")
    assert chosen == "torch" and "need CUDA" in line


def test_triton_requested_but_unavailable(monkeypatch, fresh_triton_state):
    with pytest.raises(SSDBackendError, match=r"ssd_backend='triton' needs a CUDA device"):
        ssd.resolve_ssd_backend("triton", "cpu")
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # "not installed"
    with pytest.raises(SSDBackendError, match=r"ssd_backend='triton'.*pip install -e \"\.\[cuda\]\""):
        ssd.resolve_ssd_backend("triton", "cuda")
    # auto falls back to torch on CUDA, saying why
    chosen, line = ssd.describe_backend_choice("auto", "cuda")
    assert chosen == "torch" and "unavailable" in line and "mamba_ssm" in line
    # and the model refuses to be built rather than failing mid-training
    with pytest.raises(SSDBackendError, match="ssd_backend"):
        _model(ssd_backend="triton")


def test_auto_picks_triton_on_cuda_when_it_loads(monkeypatch, fresh_triton_state):
    fake = {"chunk_scan": object(), "rmsnorm": object()}
    monkeypatch.setattr(ssd, "load_mamba_triton", lambda *a, **k: fake)
    assert ssd.resolve_ssd_backend("auto", "cuda") == "triton"
    assert ssd.resolve_ssd_backend("triton", "cuda:0") == "triton"
    assert ssd.resolve_ssd_backend("AUTO", "cpu") == "torch"


def _fake_mamba(root, init_error, kernels_ok=True):
    """A mamba_ssm package whose __init__ fails like a build without selective_scan_cuda."""
    pkg = root / "mamba_ssm"
    (pkg / "ops" / "triton").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise ImportError({init_error!r})\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "layernorm_gated.py").write_text("def rmsnorm_fn(*a, **k):\n    return 'rms'\n")
    body = "from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn\n"
    if not kernels_ok:
        body = "import triton_that_is_missing\n" + body
    (pkg / "ops" / "triton" / "ssd_combined.py").write_text(
        body + "def mamba_chunk_scan_combined(*a, **k):\n    return 'scan'\n"
    )


def _pop_mamba():
    return {m: sys.modules.pop(m) for m in list(sys.modules) if m == "mamba_ssm" or m.startswith("mamba_ssm.")}


@pytest.mark.parametrize("kernels_ok", [True, False])
def test_half_broken_mamba_install_is_caught(tmp_path, monkeypatch, fresh_triton_state, kernels_ok):
    _fake_mamba(tmp_path, "No module named 'selective_scan_cuda'", kernels_ok)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _pop_mamba()  # a real mamba-ssm (GPU machine) must not shadow the fake one
    try:
        ops = ssd.load_mamba_triton()
        if kernels_ok:  # the Triton modules load without the package __init__
            assert ops["chunk_scan"]() == "scan" and ops["rmsnorm"]() == "rms"
            assert ssd.resolve_ssd_backend("auto", "cuda") == "triton"
        else:
            assert ops is None
            error = ssd.mamba_triton_error()
            assert "selective_scan_cuda" in error and "triton_that_is_missing" in error
            with pytest.raises(SSDBackendError, match=r"selective_scan_cuda.*pip install"):
                ssd.resolve_ssd_backend("triton", "cuda")
            assert ssd.resolve_ssd_backend("auto", "cuda") == "torch"
        # the placeholder package is gone: importing mamba_ssm itself still fails as before
        with pytest.raises(ImportError, match="selective_scan_cuda"):
            __import__("mamba_ssm")
    finally:
        _pop_mamba()
        sys.modules.update(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton SSD kernels need CUDA")
def test_triton_and_torch_backends_agree_on_gpu():
    """mamba-ssm's kernels vs the PyTorch scan, forward and gradients (Triton uses TF32: mamba's own
    fp32 tolerance, rtol 1e-2 / atol 3e-3)."""
    if ssd.load_mamba_triton() is None:
        pytest.skip(f"mamba-ssm's Triton kernels unavailable: {ssd.mamba_triton_error()}")
    inputs = [t.float().cuda() for t in _ssd_inputs(batch=3, length=77, nheads=4, headdim=32, dstate=16)]
    z = torch.randn(3, 77, 128, device="cuda")
    w = torch.rand(128, device="cuda") + 0.5
    outs, grads = {}, {}
    for backend in ("torch", "triton"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs + [z, w]]
        x, dt, A, B, C, D, dt_bias, zz, ww = leaves
        y = ssd.ssd_scan(x, dt, A, B, C, 32, D=D, dt_bias=dt_bias, backend=backend)
        out = ssd.gated_norm(y.reshape(3, 77, 128), zz, ww, 1e-5, backend=backend)
        out.square().sum().backward()
        outs[backend], grads[backend] = out.detach(), [t.grad for t in leaves]
    torch.testing.assert_close(outs["triton"], outs["torch"], rtol=1e-2, atol=3e-3)
    for g_triton, g_torch in zip(grads["triton"], grads["torch"]):
        scale = g_torch.abs().max().clamp_min(1.0)  # sums over many positions: compare relative to size
        torch.testing.assert_close(g_triton / scale, g_torch / scale, rtol=1e-2, atol=3e-3)


# ------------------------------------------------------------------------------------- end to end


def test_cli_trains_and_evaluates_on_ml100k(cli_config, tmp_path, run_cli):
    config = cli_config(
        "TiM4Rec",
        train_batch_size=2048,
        eval_batch_size=4096,
        hidden_size=16,
        num_layers=1,
        head_dim=8,
        d_state=8,
        chunk_size=8,
        MAX_ITEM_LIST_LENGTH=20,
        user_inter_num_interval="[20,40]",  # the shorter histories of ml-100k keep this test fast
    )
    out = run_cli("run_recbole.py", *cli_args(config))
    text = out.stdout + out.stderr
    assert "SSD backend: torch" in text
    result = printed_metrics(text)
    assert 0.0 < result["hit@10"] <= 1.0 and math.isfinite(result["ndcg@10"])
