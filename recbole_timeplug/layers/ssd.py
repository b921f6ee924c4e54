"""The state-space-duality (SSD, Mamba-2) scan used by TiM4Rec, on any device.

Semantics (Dao & Gu, "Transformers are SSMs", ICML 2024; mamba-ssm's ``mamba_chunk_scan_combined``), per
head h with state S in R^{P x N}, S_0 = 0:

    Delta_{l,h} = softplus(dt_{l,h} + dt_bias_h)                       (fp32; softplus threshold 20)
    S_{l,h}     = exp(A_h * Delta_{l,h}) * S_{l-1,h} + Delta_{l,h} * x_{l,h} B_l^T
    y_{l,h}     = S_{l,h} C_l + D_h * x_{l,h}

Equivalently y_i = sum_{j<=i} (C_i . B_j) exp(A sum_{m=j+1..i} Delta_m) Delta_j x_j + D x_i (the "dual",
1-semiseparable masked-attention form).  TiM4Rec makes the SSD time-aware only through ``dt`` (see
``tim4rec.py``), so the same scan serves both the plain and the time-aware model.

What is here, each tested against the one above it:

* :func:`ssd_naive` - the step-by-step recurrence (a loop over positions; any dtype, float64 in tests);
* :func:`ssd_chunked` - the chunked block decomposition of mamba's ``ssd_minimal_discrete`` (intra-chunk
  quadratic form + inter-chunk state passing), in plain PyTorch, with the stable segment-sum and right
  padding to a multiple of the chunk, so any length L works;
* :func:`ssd_last` - the output at one position per sequence (what a last layer feeds the loss), as
  the dual form's weighted sum over that row, O(L) per sequence;
* :func:`gated_rms_norm` - ``w * g / sqrt(mean(g^2) + eps)`` with ``g = y * silu(z)`` (mamba's
  ``RMSNorm(norm_before_gate=False)``), computed in fp32;
* :func:`causal_depthwise_conv1d` - Mamba's local causal conv (left context only), with a hand-written
  backward on CPU tested against :func:`causal_depthwise_conv1d_reference` (autograd of ``F.conv1d``);
* the optional mamba-ssm Triton kernels (``mamba_chunk_scan_combined``, gated ``rmsnorm_fn``), imported
  lazily by :func:`load_mamba_triton`, and :func:`resolve_ssd_backend` for ``ssd_backend: auto|torch|triton``.

mamba-ssm is an optional extra (``pip install -e ".[cuda]"``).  Importing any ``mamba_ssm.*`` module runs
``mamba_ssm/__init__.py``, which imports the compiled ``selective_scan_cuda`` extension; a build without
it (``MAMBA_SKIP_CUDA_BUILD=TRUE``, the only build possible without nvcc) fails there although the SSD
Triton kernels do not need that extension.  :func:`load_mamba_triton` then loads the Triton modules
without executing the package ``__init__``; every failure is caught, remembered and reported, never
raised at import time of this package.
"""

import functools
import importlib
import importlib.util
import logging
import math
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

from recbole_timeplug.errors import TimeplugError

logger = logging.getLogger(__name__)

SSD_BACKENDS = ("auto", "torch", "triton")
INSTALL_HINT = (
    'install mamba-ssm on a CUDA machine: pip install -e ".[cuda]" (or, without nvcc, '
    "MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation --no-deps mamba-ssm "
    "plus triton)"
)


class SSDBackendError(TimeplugError, RuntimeError):
    """``ssd_backend`` asks for something this machine cannot do (or names no backend)."""


# ----------------------------------------------------------------------------------------- softplus
def at_least_fp32(t):
    """``t`` in fp32, or left in fp64 (the float64 references and tests)."""
    return t if t.dtype == torch.float64 else t.float()


def softplus_dt(dt, dt_bias=None):
    """Delta = softplus(dt + dt_bias) in (at least) fp32, threshold 20 as mamba's Triton ``softplus``."""
    dt = at_least_fp32(dt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    return F.softplus(dt, beta=1.0, threshold=20.0)


# -------------------------------------------------------------------------------- naive reference
def ssd_naive(x, delta, A, B, C, D=None):
    """Step-by-step SSD recurrence: the reference every fast path is tested against.

    Args:
        x: (batch, L, H, P) inputs; delta: (batch, L, H) positive steps (already softplus-ed);
        A: (H,) negative decay rates; B, C: (batch, L, G, N) with H % G == 0; D: (H,) or None.
    Returns:
        y: (batch, L, H, P) in the dtype of ``x`` (computed in the promoted dtype of all inputs).
    """
    batch, length, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    dtype = torch.promote_types(torch.promote_types(x.dtype, delta.dtype), torch.promote_types(A.dtype, B.dtype))
    x, delta, A, B, C = (t.to(dtype) for t in (x, delta, A, B, C))
    head_group = torch.arange(nheads, device=x.device) // (nheads // ngroups)
    B, C = B[:, :, head_group], C[:, :, head_group]  # (batch, L, H, N)
    state = x.new_zeros(batch, nheads, headdim, dstate)
    ys = []
    for step in range(length):
        decay = torch.exp(A * delta[:, step])  # (batch, H)
        write = (delta[:, step, :, None] * x[:, step])[..., None] * B[:, step, :, None, :]  # (batch, H, P, N)
        state = decay[:, :, None, None] * state + write
        ys.append((state * C[:, step, :, None, :]).sum(-1))  # (batch, H, P)
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x
    return y


# ----------------------------------------------------------------------------- chunked PyTorch scan
def segsum(a):
    """Stable segment sum: out[..., i, j] = sum_{m=j+1..i} a[..., m] for j <= i, -inf above the diagonal.

    Computed as a masked cumulative sum (no difference of two large cumsums, so no cancellation), and
    the upper triangle is set to -inf *before* the exp so that exp gives exact zeros there instead of
    inf * 0 = NaN in the backward pass.
    """
    size = a.shape[-1]
    above_diagonal, on_or_above = _triangle_masks(size, a.device)
    a = a[..., None].expand(*a.shape, size)  # a[..., m, j] = a[..., m]
    out = torch.cumsum(a.masked_fill(on_or_above, 0.0), dim=-2)
    return out.masked_fill(above_diagonal, -math.inf)


@functools.lru_cache(maxsize=64)
def _triangle_masks(size, device):
    """(j > i, j >= i) masks of a size x size block, built once per (size, device) and reused."""
    upper = torch.ones(size, size, dtype=torch.bool, device=device).triu(1)
    return upper, torch.ones(size, size, dtype=torch.bool, device=device).triu(0)


def ssd_chunked(x, delta, A, B, C, chunk_size, D=None):
    """The SSD scan by chunks (mamba's ``ssd_minimal_discrete`` algorithm) in plain PyTorch, any L.

    Same arguments and result as :func:`ssd_naive`.  The sequence is right-padded with delta = 0 (so
    padded steps neither write nor decay and cannot reach earlier positions) to a multiple of
    ``chunk_size``, then: (1) outputs inside each chunk from the quadratic form with the segment-sum decay
    mask, (2) each chunk's final state, (3) states passed between chunks (a segment-sum over chunk
    totals), (4) the contribution of the state entering each chunk; the result is cropped back to L.
    Runs in fp32 (fp64 if given fp64) regardless of autocast - the decays exp(A * cumsum(delta)) need it.
    """
    batch, length, nheads, headdim = x.shape
    ngroups = B.shape[2]
    if nheads % ngroups:
        raise ValueError(f"SSD: {nheads} heads are not divisible into {ngroups} groups of B/C.")
    out_dtype = x.dtype
    dtype = torch.float64 if torch.float64 in (x.dtype, delta.dtype, B.dtype) else torch.float32
    device_type = x.device.type
    # The decomposition is exact for any Q, so Q only decides the cost. Chunks longer than the sequence
    # would only add padding; and up to two chunks' length one quadratic block is cheaper than two blocks
    # plus the state passing between them (measured on CPU, B=16: L=50 with Q=32 pads to 64 and was 1.2x
    # slower than one 50-long block; at L=64 the two were equal).
    chunk_size = max(1, int(chunk_size))
    if length <= 2 * chunk_size:
        chunk_size = length
    with torch.autocast(device_type=device_type, enabled=False):
        x, delta, A, B, C = (t.to(dtype) for t in (x, delta, A, B, C))
        pad = (-length) % chunk_size
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
            delta = F.pad(delta, (0, 0, 0, pad))
            B = F.pad(B, (0, 0, 0, 0, 0, pad))
            C = F.pad(C, (0, 0, 0, 0, 0, pad))
        nchunks = (length + pad) // chunk_size
        # (batch, chunk, q, ...) blocks; heads h belong to group h // (H / G)
        head_group = torch.arange(nheads, device=x.device) // (nheads // ngroups)
        xd = (x * delta[..., None]).view(batch, nchunks, chunk_size, nheads, headdim)  # Delta_j x_j
        a = (A * delta).view(batch, nchunks, chunk_size, nheads).permute(0, 3, 1, 2)  # (b, h, c, q)
        Bc = B.view(batch, nchunks, chunk_size, ngroups, -1)
        Cc = C.view(batch, nchunks, chunk_size, ngroups, -1)
        a_cumsum = torch.cumsum(a, dim=-1)

        # 1. intra-chunk (diagonal blocks): y_l = sum_{s<=l} (C_l.B_s) exp(segsum) Delta_s x_s
        if ngroups == 1:  # one B/C group for all heads (TiM4Rec): broadcast over h instead of copying
            cb = torch.einsum("bcln,bcsn->bcls", Cc[:, :, :, 0], Bc[:, :, :, 0]).unsqueeze(1)  # (b, 1, c, q, q)
        else:
            cb = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)[:, head_group]  # (b, h, c, q, q)
        decay = torch.exp(segsum(a))  # (b, h, c, q, q)
        y = torch.einsum("bhcls,bcshp->bclhp", cb * decay, xd)

        if nchunks > 1:  # with one chunk no state enters it (S_0 = 0): steps 2-4 add nothing
            y = y + _inter_chunk_output(xd, a_cumsum, Bc, Cc, head_group)

        y = y.reshape(batch, nchunks * chunk_size, nheads, headdim)[:, :length]
        if D is not None:
            y = y + D.to(dtype)[:, None] * x[:, :length]
    return y.to(out_dtype)


def _inter_chunk_output(xd, a_cumsum, Bc, Cc, head_group):
    """Steps 2-4 of :func:`ssd_chunked`: the contribution of the state entering each chunk."""
    # 2. state at the end of each chunk from its own inputs
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)  # (b, h, c, q)
    one_group = Bc.shape[3] == 1  # broadcast the group's B/C over the heads instead of copying them
    if one_group:
        states = torch.einsum("bcln,bhcl,bclhp->bchpn", Bc[:, :, :, 0], decay_to_end, xd)
    else:
        states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc[:, :, :, head_group], decay_to_end, xd)

    # 3. pass states across chunks: state entering chunk z = sum_{c<z} exp(sum of chunk totals) state_c
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    chunk_decay = torch.exp(segsum(F.pad(a_cumsum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)[:, :-1]

    # 4. the entering state's contribution inside each chunk
    if one_group:
        return torch.einsum("bcln,bchpn,bhcl->bclhp", Cc[:, :, :, 0], states, torch.exp(a_cumsum))
    return torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc[:, :, :, head_group], states, torch.exp(a_cumsum))


def ssd_last(x, delta, A, B, C_last, last, D=None):
    """The SSD output at one position per sequence, ``y[b, last[b]]``, in O(L) per sequence.

    A recommender's loss and its scores read one hidden state per sequence (the last real item's), so the
    last layer needs one output row, not all L.  The dual form for one row i,

        y_i = sum_{j<=i} exp(A sum_{m=j+1..i} Delta_m) Delta_j (C_i . B_j) x_j + D x_i,

    is a weighted sum over j with one weight per (j, head): no L x L block, no chunks, any L.  The segment
    sums are a reversed cumulative sum of exactly the terms m in (j, i] (every one A Delta_m <= 0, so no
    cancellation), as :func:`segsum` sums them for the chunked scan.

    Args:
        x: (batch, L, H, P); delta: (batch, L, H) positive steps (already softplus-ed); A: (H,);
        B: (batch, L, G, N); C_last: (batch, G, N), C at each sequence's position ``last``;
        last: (batch,) int positions 0 <= last < L; D: (H,) or None.
    Returns:
        (batch, H, P) in the dtype of ``x`` (computed in fp32, fp64 if given fp64), equal to
        ``ssd_naive(...)[arange(batch), last]`` up to float summation order (tested).
    """
    batch, length, nheads, _ = x.shape
    ngroups = B.shape[2]
    out_dtype = x.dtype
    dtype = torch.float64 if torch.float64 in (x.dtype, delta.dtype, B.dtype) else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, delta, A, B, C_last = (t.to(dtype) for t in (x, delta, A, B, C_last))
        rows = torch.arange(batch, device=x.device)
        upto = torch.arange(length, device=x.device)[None, :] <= last[:, None]  # (b, L): j <= i
        a = (A * delta).masked_fill(~upto[..., None], 0.0)  # (b, L, H); terms after i never enter
        # seg[j] = sum_{m=j+1..L-1} a[m] = sum_{m=j+1..i} A Delta_m: shift by one, then a reversed cumsum
        seg = torch.cumsum(F.pad(a[:, 1:], (0, 0, 0, 1)).flip(1), dim=1).flip(1)
        cb = torch.einsum("bgn,blgn->blg", C_last, B)  # (b, L, G): C_i . B_j
        if ngroups > 1:
            cb = cb[:, :, torch.arange(nheads, device=x.device) // (nheads // ngroups)]
        weight = (torch.exp(seg) * delta * cb).masked_fill(~upto[..., None], 0.0)  # (b, L, H)
        y = torch.einsum("blh,blhp->bhp", weight, x)
        if D is not None:
            y = y + D.to(dtype)[:, None] * x[rows, last]
    return y.to(out_dtype)


# --------------------------------------------------------------------------------------- norms, conv
def gated_rms_norm(y, z, weight, eps):
    """mamba's gated RMSNorm with ``norm_before_gate=False`` and one group: fp32, result in y's dtype."""
    with torch.autocast(device_type=y.device.type, enabled=False):
        g = at_least_fp32(y) * F.silu(at_least_fp32(z))
        out = g * torch.rsqrt(g.square().mean(dim=-1, keepdim=True) + eps) * weight.to(g.dtype)
    return out.to(y.dtype)


def causal_depthwise_conv1d_reference(x, weight, bias=None):
    """Depthwise conv over the last axis with left context only: x (batch, channels, L) -> same shape.

    ``weight`` is (channels, 1, k) as in ``nn.Conv1d(groups=channels)``.  Equivalent to padding k-1 on
    both sides and dropping the last k-1 outputs (the official code), without computing them.  The
    gradients are autograd's of ``F.conv1d``: the reference :func:`causal_depthwise_conv1d` is tested on.
    """
    kernel = weight.shape[-1]
    return F.conv1d(F.pad(x, (kernel - 1, 0)), weight, bias, groups=x.shape[1])


class _CausalDepthwiseConv1dFn(torch.autograd.Function):
    """The causal depthwise conv with its backward written as two more depthwise convs.

    On CPU, oneDNN's backward of a depthwise ``F.conv1d`` is ~5x slower than its forward (measured at
    B=1024, L=20, 192 channels: it was 16% of a TiM4Rec training step).  Both gradients are themselves
    depthwise correlations that the fast forward kernel computes:

    * dL/dx[c, t] = sum_j w[c, j] g[c, t + k-1 - j]: ``g`` right-padded by k-1, correlated with ``flip(w)``;
    * dL/dw[c, j] = sum_{b, t} g[b, c, t] x_pad[b, c, t + j]: a correlation of each (b, c) row of ``x_pad``
      with the same row of ``g`` as its kernel (one conv with groups = B*C), summed over b;
    * dL/db[c] = sum_{b, t} g[b, c, t].

    Same values as autograd up to float summation order (tested); first-order gradients only.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        kernel = weight.shape[-1]
        x_pad = F.pad(x, (kernel - 1, 0))
        ctx.save_for_backward(x_pad, weight)
        ctx.has_bias = bias is not None
        return F.conv1d(x_pad, weight, bias, groups=x.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x_pad, weight = ctx.saved_tensors
        batch, channels, length = grad.shape
        kernel = weight.shape[-1]
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv1d(F.pad(grad, (0, kernel - 1)), weight.flip(-1), None, groups=channels)
        if ctx.needs_input_grad[1]:
            rows = batch * channels
            grad_w = F.conv1d(x_pad.reshape(1, rows, -1), grad.reshape(rows, 1, length), groups=rows)
            grad_w = grad_w.view(batch, channels, kernel).sum(0).unsqueeze(1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2))
        return grad_x, grad_w, grad_b


def causal_depthwise_conv1d(x, weight, bias=None):
    """:func:`causal_depthwise_conv1d_reference` with a faster backward on CPU (same values).

    On CPU with gradients needed it runs :class:`_CausalDepthwiseConv1dFn`; elsewhere (CUDA's cuDNN
    backward is fast, and inference needs none) the reference itself.
    """
    if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _CausalDepthwiseConv1dFn.apply(x, weight, bias)
    return causal_depthwise_conv1d_reference(x, weight, bias)


class CausalDepthwiseConv1d(nn.Conv1d):
    """``nn.Conv1d(channels, channels, k, groups=channels)`` applied causally (so ``apply(init)`` sees it)."""

    def __init__(self, channels, kernel_size, bias=True):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias, padding=0)

    def forward(self, x):
        return causal_depthwise_conv1d(x, self.weight, self.bias)


# ------------------------------------------------------------------------------ mamba-ssm (optional)
_TRITON_STATE = {"loaded": False, "ops": None, "error": None}


def _load_triton_modules_without_package_init():
    """Import mamba-ssm's Triton SSD modules without running ``mamba_ssm/__init__.py``.

    That ``__init__`` imports the compiled ``selective_scan_cuda`` (Mamba-1) extension; the SSD Triton
    modules only import each other, triton and einops.  A placeholder package object pointing at the
    installed folder is registered while they load and removed afterwards, so a later ``import mamba_ssm``
    elsewhere still runs the real ``__init__`` (and fails or succeeds as it would have).
    """
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'mamba_ssm'")
    placeholder = types.ModuleType("mamba_ssm")
    placeholder.__path__ = list(spec.submodule_search_locations)
    placeholder.__spec__ = spec
    saved = sys.modules.get("mamba_ssm")
    sys.modules["mamba_ssm"] = placeholder
    try:
        combined = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        gated = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated")
    finally:
        if saved is None:
            sys.modules.pop("mamba_ssm", None)
        else:  # pragma: no cover - a real package object was there already
            sys.modules["mamba_ssm"] = saved
    return combined, gated


def load_mamba_triton(force_retry=False):
    """mamba-ssm's Triton ops as ``{"chunk_scan": ..., "rmsnorm": ...}``, or None (reason in
    :func:`mamba_triton_error`).  Never raises; the result is cached for the process."""
    if _TRITON_STATE["loaded"] and not force_retry:
        return _TRITON_STATE["ops"]
    _TRITON_STATE.update(loaded=True, ops=None, error=None)
    errors = []
    combined = gated = None
    try:
        combined = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        gated = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated")
    except Exception as err:  # noqa: BLE001 - ImportError, OSError (bad .so), RuntimeError (triton) ...
        errors.append(f"import mamba_ssm.ops.triton.ssd_combined: {type(err).__name__}: {err}")
        if importlib.util.find_spec("mamba_ssm") is not None:
            # installed but its __init__ (compiled extension) failed: the Triton kernels may still load
            try:
                combined, gated = _load_triton_modules_without_package_init()
                logger.warning(
                    "mamba_ssm's package __init__ failed (%s); loaded its Triton SSD kernels directly "
                    "(they do not need the compiled CUDA extension).",
                    errors[0],
                )
            except Exception as err2:  # noqa: BLE001
                errors.append(f"direct load of the Triton modules: {type(err2).__name__}: {err2}")
                combined = gated = None
    if combined is not None:
        chunk_scan = getattr(combined, "mamba_chunk_scan_combined", None)
        rmsnorm = getattr(gated, "rmsnorm_fn", None)
        if chunk_scan is None or rmsnorm is None:
            errors.append("mamba_ssm has no mamba_chunk_scan_combined / rmsnorm_fn (mamba-ssm >= 2.0 needed)")
        else:
            _TRITON_STATE["ops"] = {"chunk_scan": chunk_scan, "rmsnorm": rmsnorm}
    if _TRITON_STATE["ops"] is None:
        _TRITON_STATE["error"] = "; ".join(errors) or "unknown error"
    return _TRITON_STATE["ops"]


def mamba_triton_error():
    """Why the Triton path is unavailable (None if it loaded or was never tried)."""
    return _TRITON_STATE["error"]


def resolve_ssd_backend(requested, device):
    """``auto`` -> ``triton`` on CUDA when mamba-ssm's Triton kernels load, else ``torch``.

    ``triton`` on a machine or device where they cannot run raises :class:`SSDBackendError` naming
    ``ssd_backend`` and how to install them.
    """
    requested = "auto" if requested is None else str(requested).lower()
    if requested not in SSD_BACKENDS:
        raise SSDBackendError(f"ssd_backend={requested!r} is not one of {', '.join(SSD_BACKENDS)}.")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if requested == "torch":
        return "torch"
    on_cuda = device.type == "cuda"
    ops = load_mamba_triton() if on_cuda or requested == "triton" else None
    if requested == "triton":
        if not on_cuda:
            raise SSDBackendError(
                f"ssd_backend='triton' needs a CUDA device, but the model runs on {device}. "
                "Use ssd_backend: torch (or auto) on this machine."
            )
        if ops is None:
            raise SSDBackendError(
                f"ssd_backend='triton' but mamba-ssm's Triton SSD kernels are unavailable "
                f"({mamba_triton_error()}). To use them, {INSTALL_HINT}; or set ssd_backend: torch (or auto)."
            )
        return "triton"
    return "triton" if ops is not None else "torch"


def describe_backend_choice(requested, device):
    """One log line explaining what ``ssd_backend`` resolved to on ``device`` (and why)."""
    chosen = resolve_ssd_backend(requested, device)
    requested = "auto" if requested is None else str(requested).lower()
    if requested != "auto":
        return chosen, f"SSD backend: {chosen} (ssd_backend={requested})"
    if chosen == "triton":
        return chosen, "SSD backend: triton (ssd_backend=auto: CUDA device and mamba-ssm's Triton kernels found)"
    if torch.device(device).type != "cuda":
        why = f"device is {device}, the Triton kernels need CUDA"
    else:
        why = f"mamba-ssm's Triton kernels unavailable: {mamba_triton_error()}"
    return chosen, f"SSD backend: torch (ssd_backend=auto: {why})"


# --------------------------------------------------------------------------------- public entry points
def ssd_scan(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, backend="torch"):
    """y = SSD(x, softplus(dt + dt_bias), A, B, C) + D x, as ``mamba_chunk_scan_combined(...,
    dt_softplus=True)`` (no dt clamp, no initial state).  ``backend`` is ``torch`` or ``triton``
    (already resolved by :func:`resolve_ssd_backend`).  Shapes: x (b, L, H, P), dt (b, L, H), A (H,),
    B/C (b, L, G, N), D/dt_bias (H,)."""
    if backend == "triton":
        ops = load_mamba_triton()
        if ops is None or not x.is_cuda:
            raise SSDBackendError(
                f"SSD backend 'triton' cannot run here (tensor on {x.device}; {mamba_triton_error()}). "
                "Set ssd_backend: torch or auto."
            )
        # kernel reads dt/A/D/dt_bias as fp32 and x/B/C in one dtype with fp32 accumulation
        return ops["chunk_scan"](
            x.contiguous(),
            dt.float().contiguous(),
            A.float(),
            B.to(x.dtype).contiguous(),
            C.to(x.dtype).contiguous(),
            chunk_size,
            D=None if D is None else D.float(),
            z=None,
            dt_bias=None if dt_bias is None else dt_bias.float(),
            dt_softplus=True,
        )
    delta = softplus_dt(dt, dt_bias)
    return ssd_chunked(x, delta, A, B, C, chunk_size, D=D)


def gated_norm(y, z, weight, eps, backend="torch"):
    """Gated RMSNorm (one group, norm after gating) with the chosen backend."""
    if backend == "triton":
        ops = load_mamba_triton()
        if ops is None or not y.is_cuda:
            raise SSDBackendError(f"gated RMSNorm backend 'triton' cannot run here ({mamba_triton_error()}).")
        return ops["rmsnorm"](y, weight, None, z=z, eps=eps, group_size=None, norm_before_gate=False)
    return gated_rms_norm(y, z, weight, eps)


__all__ = [
    "SSD_BACKENDS",
    "SSDBackendError",
    "at_least_fp32",
    "CausalDepthwiseConv1d",
    "causal_depthwise_conv1d",
    "causal_depthwise_conv1d_reference",
    "describe_backend_choice",
    "gated_norm",
    "gated_rms_norm",
    "load_mamba_triton",
    "mamba_triton_error",
    "resolve_ssd_backend",
    "segsum",
    "softplus_dt",
    "ssd_chunked",
    "ssd_last",
    "ssd_naive",
    "ssd_scan",
]
