"""alpha-entmax with a per-row alpha, the sequence-adaptive alpha, and LightSANs' low-rank interest attention.

Used by MASAN (``model/sequential_recommender/masan.py``).

alpha-entmax (Peters, Niculae & Martins, ACL 2019; Correia, Niculae & Martins, EMNLP 2019) maps scores
``x`` along one axis to

    p_i = [ (alpha - 1) x_i - tau ]_+ ^ (1 / (alpha - 1)),      tau such that sum_i p_i = 1,       (E1)

softmax as alpha -> 1, entmax-1.5 at alpha = 1.5, sparsemax at alpha = 2.  Three ways to evaluate it:

* ``"bisect"`` - the ``entmax`` package's ``entmax_bisect`` (the reference; MASAN's logs used entmax's
  bisection).  Each bisection step halves a bracket of width <= 1 around tau, so after n steps tau is
  known to 2^-n: 24-25 steps reach float32 resolution, the package default of 50 only costs time.
* ``"newton"`` - :class:`EntmaxNewtonFunction`, this module's fast path.  f(tau) = sum_i [z_i - tau]_+^p - 1
  (z = (alpha-1) x - max, p = 1/(alpha-1) >= 1) is convex and decreasing, so Newton's method started at
  tau = -1 (where f >= 0: the maximum alone contributes 1) increases monotonically to the root and never
  overshoots (the tangent of a convex function lies below it); at alpha = 2 it is Michelot's finite
  sparsemax algorithm.  Far from the root it gains a factor (1 - 1/p) per step on f's overestimate, which
  is at most the row length n, and then converges quadratically: 6-8 steps reach float32 resolution for
  n <= 200 (measured over alpha in [1.05, 2], scales 1e-4..30, adversarial spacings).  An exact closed form
  after sorting exists only for alpha in {1.5, 2} (the root of a quadratic / linear equation on the
  support); for other alpha the support equation sum_{i in S} (z_i - tau)^p = 1 has no closed form, so the
  sort-based path is offered only there:
* ``"sort"`` - the package's exact ``entmax15`` / ``sparsemax`` for a fixed scalar alpha of 1.5 / 2.

The backward pass (for ``"newton"``) is the closed form of Peters et al. 2019 (Jacobian w.r.t. x) and
Correia et al. 2019, Prop. 1 (derivative w.r.t. alpha), with g_i = p_i^(2-alpha) on the support:

    dL/dx_i    = g_i (dY_i - sum_j g_j dY_j / sum_j g_j)                                          (E2)
    dL/dalpha  = sum_i dY_i [ (p_i - g~_i) / (alpha-1)^2 - (p_i log p_i - g~_i H) / (alpha-1) ],       (E3)
                 g~ = g / sum g,  H = sum_j p_j log p_j.

Sequence-adaptive alpha (DSAN, Yuan et al. AAAI 2021; MASAN's ``alpha_w``): alpha = 1 + sigmoid(w . c + b),
in (1, 2]; alpha exactly 1 (sigmoid underflow) makes (E1) degenerate (bisection returns a uniform
distribution, deep-spin/entmax#23), so it is kept >= ``alpha_min`` (default 1 + 1e-4).

Low-rank interest attention (LightSANs, Fan et al. SIGIR 2021, as in RecBole 1.2.1's
``LightMultiHeadAttention``): :class:`InterestAggregation` and :class:`AdaptiveLightMultiHeadAttention`
keep RecBole's parameter names, so a RecBole ``LightSANs`` state dict loads into MASAN and back.
"""

import math

import torch
from torch import nn
from torch.autograd import Function

try:
    from entmax import entmax15, entmax_bisect, sparsemax
except ImportError as _err:  # pragma: no cover - entmax is a declared dependency
    raise ImportError(
        "MASAN's alpha-entmax needs the `entmax` package (>= 1.3): pip install 'entmax>=1.3'"
    ) from _err

ENTMAX_IMPLS = ("newton", "bisect", "sort")


# ------------------------------------------------------------------------------------ alpha-entmax
def _alpha_tensor(alpha, X):
    if not torch.is_tensor(alpha):
        alpha = torch.tensor(float(alpha), dtype=X.dtype, device=X.device)
    return alpha.to(dtype=X.dtype)


def _sum_to(grad, shape):
    """Sum a broadcast gradient back to ``shape`` (the shape alpha was passed in)."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    if len(shape) == 0:
        return grad.sum()
    return grad.sum_to_size(shape)


def newton_threshold(z, power, dim, n_iter, tol=0.0):
    """The threshold tau of (E1) for shifted scores ``z`` (row maximum 0), by monotone Newton from tau = -1.

    Runs at most ``n_iter`` steps; with ``tol > 0`` it stops after the first step whose size is ``<= tol``
    in every row (one host sync per step). Newton on this convex, decreasing f converges quadratically
    near the root, so once every step is below ``tol`` the remaining error is O(tol^2) in exact
    arithmetic; in float32 the iterates reach the rounding floor of f long before ``n_iter`` = 10
    (measured 3-8 steps, ``tests/test_masan.py``). ``tol = 0`` always takes ``n_iter`` steps.
    Returns ``(tau, steps_taken)``.
    """
    power_m1 = power - 1.0  # p - 1 >= 0
    # r^(p-1) is 0 at r = 0 except where p = 1 (alpha = 2): 0^0 = 1 there, so mask only when needed
    exact_two = bool((power_m1 == 0).any())
    tiny = torch.finfo(z.dtype).tiny
    tau = torch.full_like(z.narrow(dim, 0, 1), -1.0)  # f(-1) >= 0: start left of the root
    steps = 0
    for steps in range(1, int(n_iter) + 1):
        r = (z - tau).clamp_min_(0)
        q = r.pow(power_m1)
        if exact_two:
            q = q.masked_fill_(r == 0, 0.0)
        f = (q * r).sum(dim=dim, keepdim=True) - 1.0
        fprime = (power * q.sum(dim=dim, keepdim=True)).clamp_min(tiny)
        step = f / fprime
        tau = tau + step
        if tol > 0 and bool(step.abs().max() <= tol):
            break
    return tau, steps


class EntmaxNewtonFunction(Function):
    """alpha-entmax along ``dim`` by monotone Newton on the threshold tau (see the module docstring).

    ``alpha`` is a tensor broadcastable to ``X`` with size 1 along ``dim`` (one alpha per row, e.g.
    ``[B, 1, 1, 1]`` for scores ``[B, h, L, k]``), every alpha in (1, 2].  Entries of ``X`` may be ``-inf``
    (they get exactly 0) as long as every row along ``dim`` has a finite entry.  ``tol``: see
    :func:`newton_threshold` (0 = exactly ``n_iter`` steps).
    """

    @staticmethod
    def forward(ctx, X, alpha, dim=-1, n_iter=10, tol=0.0):
        alpha = _alpha_tensor(alpha, X)
        am1 = alpha - 1
        z = X * am1
        z = z - z.amax(dim=dim, keepdim=True)  # the largest entry sits at 0, so tau* is in [-1, 0)
        power = 1.0 / am1  # p >= 1
        tau, _ = newton_threshold(z, power, dim, n_iter, tol)
        r = (z - tau).clamp_min_(0)
        Y = r.pow(power)  # p >= 1, so 0^p = 0 off the support
        # the iterate is at or left of the root, so the row sums to >= 1 up to rounding: renormalise
        # (as entmax_bisect's ensure_sum_one does)
        Y = Y / Y.sum(dim=dim, keepdim=True)
        ctx.dim = dim
        ctx.alpha_shape = tuple(alpha.shape)
        ctx.save_for_backward(Y, alpha)
        return Y

    @staticmethod
    def backward(ctx, dY):
        Y, alpha = ctx.saved_tensors
        dim = ctx.dim
        support = Y > 0
        g = Y.pow(2 - alpha)
        if bool((alpha == 2).any()):  # 0^0 = 1 off the support at alpha = 2
            g = g.masked_fill_(~support, 0.0)
        g_sum = g.sum(dim=dim, keepdim=True)
        dX = dY * g
        dX = dX - g * (dX.sum(dim=dim, keepdim=True) / g_sum)  # (E2)
        d_alpha = None
        if ctx.needs_input_grad[1]:
            am1 = alpha - 1
            # (not torch.xlogy: its log rounds differently from torch.log, and this stays bit-equal to before)
            p_log_p = torch.where(support, Y * torch.log(torch.where(support, Y, torch.ones_like(Y))), torch.zeros_like(Y))
            entropy_term = p_log_p.sum(dim=dim, keepdim=True)
            g_tilde = g / g_sum
            d_alpha = dY * ((Y - g_tilde) / am1**2 - (p_log_p - g_tilde * entropy_term) / am1)  # (E3)
            d_alpha = _sum_to(d_alpha.sum(dim=dim, keepdim=True), ctx.alpha_shape)
        return dX, d_alpha, None, None, None


def entmax_newton(X, alpha, dim=-1, n_iter=10, tol=0.0):
    """alpha-entmax of ``X`` along ``dim`` (fast path): see :class:`EntmaxNewtonFunction`."""
    return EntmaxNewtonFunction.apply(X, alpha, dim, n_iter, tol)


def alpha_entmax(X, alpha, dim=-1, impl="newton", n_iter=None, tol=0.0):
    """alpha-entmax of ``X`` along ``dim`` with one alpha per row.

    Args:
        X (Tensor): scores; ``-inf`` entries get probability 0 (each row needs one finite entry).
        alpha (float | Tensor): in (1, 2]; a tensor must broadcast to ``X`` with size 1 along ``dim``.
        impl (str): ``"newton"`` (default, fast), ``"bisect"`` (the ``entmax`` package, the reference) or
            ``"sort"`` (exact ``entmax15`` / ``sparsemax``; a fixed alpha of exactly 1.5 or 2 only).
        n_iter (int, optional): Newton steps (default 10; the most with ``tol``) or bisection steps (default 25).
        tol (float): ``"newton"`` only: stop once every row's Newton step is ``<= tol`` (0: ``n_iter`` steps).
    """
    if impl == "newton":
        return entmax_newton(X, alpha, dim, 10 if n_iter is None else n_iter, tol)
    if impl == "bisect":
        if not torch.is_tensor(alpha):
            alpha = torch.tensor(float(alpha), dtype=X.dtype, device=X.device)
        return entmax_bisect(X, alpha, dim=dim, n_iter=25 if n_iter is None else n_iter)
    if impl == "sort":
        value = float(alpha) if not torch.is_tensor(alpha) or alpha.numel() == 1 else None
        if value == 1.5:
            return entmax15(X, dim=dim)
        if value == 2.0:
            return sparsemax(X, dim=dim)
        raise ValueError(
            "entmax_impl 'sort' is exact only for one fixed alpha of 1.5 or 2 (entmax15 / sparsemax); "
            f"got alpha={alpha if value is None else value}. Use entmax_impl: newton (any alpha) instead."
        )
    raise ValueError(f"entmax_impl must be one of {ENTMAX_IMPLS}, got {impl!r}.")


# ------------------------------------------------------------------------- sequence-adaptive alpha
def sequence_adaptive_alpha(logit, alpha_min=1.0 + 1e-4):
    """alpha = 1 + sigmoid(logit), kept in [alpha_min, 2] (alpha -> 1 degenerates entmax; see module doc)."""
    return (1.0 + torch.sigmoid(logit)).clamp(min=alpha_min, max=2.0)


def pool_context(hidden, item_seq_len, mode):
    """The vector alpha is computed from: the last *real* item (``"last"``) or the mean of real items.

    RecBole right-pads, so slot L-1 is padding for every sequence shorter than L: never use it.
    """
    if mode == "last":
        index = (item_seq_len - 1).view(-1, 1, 1).expand(-1, 1, hidden.size(-1))
        return hidden.gather(1, index).squeeze(1)
    if mode == "mean":
        valid = padding_valid_mask(item_seq_len, hidden.size(1)).unsqueeze(-1).to(hidden.dtype)
        return (hidden * valid).sum(1) / valid.sum(1).clamp_min(1.0)
    raise ValueError(f"alpha_pool must be 'last' or 'mean', got {mode!r}.")


def padding_valid_mask(item_seq_len, seq_len):
    """[B, L] bool, True at real items (RecBole's sequences are left-aligned, right-padded)."""
    positions = torch.arange(seq_len, device=item_seq_len.device)
    return positions.unsqueeze(0) < item_seq_len.unsqueeze(1)


# ----------------------------------------------------------------------- low-rank interest attention
class Normaliser:
    """softmax or alpha-entmax along an axis; alpha None = softmax."""

    def __init__(self, impl="newton", n_iter=None, tol=0.0):
        self.impl = impl
        self.n_iter = n_iter
        self.tol = tol

    def __call__(self, scores, alpha, dim):
        if alpha is None:
            return torch.softmax(scores, dim=dim)
        return alpha_entmax(scores, alpha, dim=dim, impl=self.impl, n_iter=self.n_iter, tol=self.tol)


class InterestAggregation(nn.Module):
    """LightSANs' item-to-interest aggregation: [B, L, d] -> [B, k, d] (RecBole ``ItemToInterestAggregation``).

    D = normalise over the L axis of (X theta), result D^T X.  ``theta`` is a raw std-1 parameter, as in
    LightSANs (the model's ``_init_weights`` does not touch it).  Optional: -inf on padded positions
    (``valid``) and alpha-entmax instead of softmax (``alpha`` given).
    """

    def __init__(self, hidden_size, k_interests):
        super().__init__()
        self.k_interests = k_interests
        self.theta = nn.Parameter(torch.randn([hidden_size, k_interests]))

    def forward(self, input_tensor, valid=None, alpha=None, normaliser=None):
        logits = torch.matmul(input_tensor, self.theta)  # [B, L, k]
        if valid is not None:
            logits = logits.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        if alpha is None:
            weights = torch.softmax(logits, dim=-2)
        else:
            weights = normaliser(logits, alpha.view(-1, 1, 1) if alpha.dim() else alpha, dim=-2)
        return torch.einsum("nij,nik->nkj", input_tensor, weights)  # [B, k, d]


class AdaptiveLightMultiHeadAttention(nn.Module):
    """RecBole's ``LightMultiHeadAttention`` with MASAN's sequence-adaptive alpha-entmax (one layer).

    Submodule names are RecBole's (plus ``alpha_w``, present only with ``alpha_mode: adaptive``).

    Args:
        alpha_mode: ``"softmax"`` (LightSANs), ``"fixed"`` (alpha = ``entmax_alpha``) or ``"adaptive"``
            (alpha_b = 1 + sigmoid(alpha_w . c_b), one per sequence, shared by the heads of the layer).
        entmax_dim: -2 normalises item-interest scores over the query (L) axis as LightSANs does;
            -1 over the k interests.
        entmax_on_aggregation / entmax_on_position: also use alpha-entmax in the item-to-interest
            aggregation / the decoupled position attention (default off: softmax there).
        mask_padding: -inf on padded positions in the aggregation logits and on padded query rows of
            the item-interest scores (LightSANs masks nothing; the position map stays unmasked).
    """

    def __init__(
        self,
        n_heads,
        k_interests,
        hidden_size,
        hidden_dropout_prob,
        attn_dropout_prob,
        layer_norm_eps,
        alpha_mode="adaptive",
        entmax_alpha=1.5,
        alpha_min=1.0 + 1e-4,
        alpha_pool="last",
        entmax_dim=-2,
        entmax_on_aggregation=False,
        entmax_on_position=False,
        mask_padding=True,
        normaliser=None,
    ):
        super().__init__()
        if hidden_size % n_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of n_heads ({n_heads}).")
        self.num_attention_heads = n_heads
        self.attention_head_size = hidden_size // n_heads
        self.all_head_size = hidden_size

        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attpooling_key = InterestAggregation(hidden_size, k_interests)
        self.attpooling_value = InterestAggregation(hidden_size, k_interests)

        # decoupled position encoding; the query side is scaled twice (pos_scaling and 1/sqrt(d_h)), as in LightSANs
        self.attn_scale_factor = 2
        self.pos_q_linear = nn.Linear(hidden_size, hidden_size)
        self.pos_k_linear = nn.Linear(hidden_size, hidden_size)
        self.pos_scaling = float(self.attention_head_size * self.attn_scale_factor) ** -0.5
        self.pos_ln = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

        self.attn_dropout = nn.Dropout(attn_dropout_prob)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)

        self.alpha_mode = alpha_mode
        self.entmax_alpha = entmax_alpha
        self.alpha_min = alpha_min
        self.alpha_pool = alpha_pool
        self.entmax_dim = entmax_dim
        self.entmax_on_aggregation = entmax_on_aggregation
        self.entmax_on_position = entmax_on_position
        self.mask_padding = mask_padding
        self.normaliser = normaliser or Normaliser()
        if alpha_mode == "adaptive":
            self.alpha_w = nn.Linear(hidden_size, 1, bias=True)  # the module MASAN's logs print
        self.last_alpha = None  # alpha of the latest forward (detached), for inspection

    def transpose_for_scores(self, x):  # [B, L, d] -> [B, h, L, d_h]
        x = x.view(*x.size()[:-1], self.num_attention_heads, self.attention_head_size)
        return x.permute(0, 2, 1, 3)

    def compute_alpha(self, input_tensor, item_seq_len):
        """[B] alpha per sequence (adaptive), a 0-dim tensor (fixed), or None (softmax)."""
        if self.alpha_mode == "softmax":
            return None
        if self.alpha_mode == "fixed":
            return torch.tensor(float(self.entmax_alpha), dtype=input_tensor.dtype, device=input_tensor.device)
        context = pool_context(input_tensor, item_seq_len, self.alpha_pool)  # [B, d]
        return sequence_adaptive_alpha(self.alpha_w(context).squeeze(-1), self.alpha_min)

    def forward(self, input_tensor, pos_emb, item_seq_len=None):
        batch, seq_len = input_tensor.shape[:2]
        if item_seq_len is None:
            item_seq_len = torch.full((batch,), seq_len, dtype=torch.long, device=input_tensor.device)
        valid = padding_valid_mask(item_seq_len, seq_len) if self.mask_padding else None
        alpha = self.compute_alpha(input_tensor, item_seq_len)
        self.last_alpha = None if alpha is None else alpha.detach()
        alpha4 = None if alpha is None else (alpha.view(-1, 1, 1, 1) if alpha.dim() else alpha)

        mixed_query_layer = self.query(input_tensor)
        mixed_key_layer = self.key(input_tensor)
        mixed_value_layer = self.value(input_tensor)

        # low-rank decomposed self-attention: items against k interests
        agg_alpha = alpha if self.entmax_on_aggregation else None
        query_layer = self.transpose_for_scores(mixed_query_layer)
        key_layer = self.transpose_for_scores(self.attpooling_key(mixed_key_layer, valid, agg_alpha, self.normaliser))
        value_layer = self.transpose_for_scores(
            self.attpooling_value(mixed_value_layer, valid, agg_alpha, self.normaliser)
        )
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        if self.entmax_dim == -2:
            # normalised over the query axis (LightSANs' convention): padded query rows get exactly 0
            if valid is not None:
                attention_scores = attention_scores.masked_fill(~valid[:, None, :, None], float("-inf"))
            attention_probs = self.normaliser(attention_scores, alpha4, dim=-2)
        else:
            # over the interests: a padded query row has no finite entry, so zero it after normalising
            attention_probs = self.normaliser(attention_scores, alpha4, dim=-1)
            if valid is not None:
                attention_probs = attention_probs * valid[:, None, :, None].to(attention_probs.dtype)
        attention_probs = self.attn_dropout(attention_probs)
        context_layer_item = torch.matmul(attention_probs, value_layer)

        # decoupled position encoding: positions against positions, un-aggregated values
        value_layer_pos = self.transpose_for_scores(mixed_value_layer)
        pos_emb = self.pos_ln(pos_emb)
        if pos_emb.dim() == 2:
            pos_emb = pos_emb.unsqueeze(0)  # shared by the batch: one L x L map per head
        pos_query_layer = self.transpose_for_scores(self.pos_q_linear(pos_emb)) * self.pos_scaling
        pos_key_layer = self.transpose_for_scores(self.pos_k_linear(pos_emb))
        abs_pos_bias = torch.matmul(pos_query_layer, pos_key_layer.transpose(-1, -2)) / math.sqrt(
            self.attention_head_size
        )
        if self.entmax_on_position and alpha is not None:
            if alpha.dim():  # one alpha per sequence makes the map batch-dependent: [B, h, L, L]
                abs_pos_bias = abs_pos_bias.expand(batch, -1, -1, -1)
            abs_pos_bias = self.normaliser(abs_pos_bias, alpha4, dim=-2)
        else:
            abs_pos_bias = torch.softmax(abs_pos_bias, dim=-2)
        context_layer_pos = torch.matmul(abs_pos_bias, value_layer_pos)

        context_layer = (context_layer_item + context_layer_pos).permute(0, 2, 1, 3).contiguous()
        context_layer = context_layer.view(batch, seq_len, self.all_head_size)
        hidden_states = self.out_dropout(self.dense(context_layer))
        return self.LayerNorm(hidden_states + input_tensor)
