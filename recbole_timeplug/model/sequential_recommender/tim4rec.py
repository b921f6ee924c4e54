"""TiM4Rec: time-aware Mamba-2 (SSD) sequential recommender.

Paper: H. Fan, M. Zhu, Y. Hu, H. Feng, Z. He, H. Liu, Q. Liu, "TiM4Rec: An Efficient Sequential
Recommendation Model Based on Time-Aware Structured State Space Duality Model", Neurocomputing 654
(2025) 131270; arXiv:2409.16182.  Semantics follow the authors' code (github.com/AlwaysFHao/TiM4Rec,
``tim4rec.py``/``ssd.py``); derivation, official-code quirks and presets in ``docs/models.md`` §2.

Implemented (B batch, L = MAX_ITEM_LIST_LENGTH, d hidden, d_in = expand*d,
H = d_in / head_dim SSD heads, N d_state, k d_conv):

* embedding         X0 = LN(Dropout(E[s]))                           (no positional embedding)
* time feature      delta_1 = 0, delta_l = t_l - t_{l-1};  tau0 = LN_L(Dropout(delta)) over the *sequence*
                    axis, broadcast to the H heads -> T0 (B, H, L)
* TiSSD layer       [z | xBC | dt_raw] = X W_in + b;  xBC = phi(CausalConv_k(xBC))
                    S = MLP_L(T) (Linear L->L, SiLU, Linear L->L along the sequence axis)
                    U = phi(CausalConv2_k(phi(CausalConv1_k(T * S))))          (per-head depthwise)
                    dt' = dt_raw * U                                           (time enters only here)
                    y = SSD(x, softplus(dt' + b_dt), A = -exp(A_log), B, C) + D x  (docs/models.md §2.3)
                    y = RMSNorm(y * SiLU(z)) ; O = y W_out + b
                    G = sigmoid(Linear(Dropout(T)))  (L->L if p2p_residual else L->1)
                    T_next = LN_L(G * T + (1 - G) * U)
* block             H = LN(Dropout(O) + X)  (no residual when num_layers == 1, as the official code)
                    X_next = LN_1e-12(Dropout(W2 Dropout(Hardswish(W1 H))) + H)   if is_ffn (inner 4d)
* output            r = X[n - 1];  scores = r E^T;  loss = full-softmax cross-entropy.  The last layer is
                    computed at row n - 1 only (``ssd_last``; docs/models.md §2.5); ``encode`` gives every row.

The time branch runs in fp32 under autocast (gaps ~1e9 s overflow fp16).  The SSD scan runs either as a
chunked pure-PyTorch scan or mamba-ssm's Triton kernel (``ssd_backend``, ``layers/ssd.py``), same
semantics.  Switches beyond the official code (defaults = official behaviour):

* ``conv_activation`` - phi; the official code silently uses Hardswish when H % 8 != 0 or causal-conv1d is
  missing and SiLU otherwise; here it is explicit (default ``hardswish``, what every official config ran).
* ``time_mask_padding`` - keep right padding out of the time branch: gaps at padded positions (including
  the boundary gap -t_n) are zeroed and the LayerNorms over L use only valid positions (their output is 0
  at padding).  Off by default; the official normalisation lets the boundary gap dominate
  (docs/models.md §2.4).
* ``time_transform`` - what the time branch sees of a gap: ``raw`` (official: seconds, so one long gap dominates
  the LayerNorm over L) or ``log`` = sign(delta) log(1 + |delta|), which keeps a day and a year apart without
  letting the year squash every other gap.
"""

import math

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_timeplug.errors import MissingFieldError, ModelConfigError
from recbole_timeplug.layers.dropout import Dropout
from recbole_timeplug.layers.ssd import (
    SSD_BACKENDS,
    CausalDepthwiseConv1d,
    at_least_fp32,
    describe_backend_choice,
    gated_norm,
    gated_rms_norm,
    resolve_ssd_backend,
    softplus_dt,
    ssd_last,
    ssd_scan,
)
from recbole_timeplug.validation import ConfigChecks

ACTIVATIONS = {"hardswish": nn.Hardswish, "silu": nn.SiLU}
TIME_TRANSFORMS = ("raw", "log")
FFN_NORM_EPS = 1e-12  # the official FFN LayerNorm does not receive norm_eps


TiM4RecConfigError = ModelConfigError  # the name before the shared ModelConfigError; kept importable


def masked_layer_norm(x, norm, mask):
    """``norm`` (a LayerNorm over the last axis L) using only positions where ``mask`` is True; 0 elsewhere.

    x: (..., L); mask: broadcastable to x, bool.  Statistics are those of nn.LayerNorm (biased variance)
    over the valid positions; the per-position affine weights are applied as in nn.LayerNorm.
    """
    if mask is None:
        return norm(x)
    m = mask.to(x.dtype)
    count = m.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=-1, keepdim=True) / count
    var = ((x - mean).square() * m).sum(dim=-1, keepdim=True) / count
    out = (x - mean) * torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        out = out * norm.weight + norm.bias
    return out * m


class TiSSD(nn.Module):
    """One time-aware SSD mixer: Mamba-2's block (in-projection, local causal conv, SSD, gated RMSNorm,
    out-projection) whose step ``dt`` is multiplied by a per-(position, head) time factor."""

    def __init__(
        self,
        d_model,
        d_state,
        d_conv,
        expand,
        head_dim,
        chunk_size,
        norm_eps,
        max_len,
        is_time,
        p2p_residual,
        time_drop_out,
        activation,
        ssd_backend,
        fast_dropout=True,
    ):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.head_dim = head_dim
        self.nheads = self.d_inner // head_dim
        self.chunk_size = chunk_size
        self.norm_eps = norm_eps
        self.is_time = is_time
        self.emits_time = True  # switched off for the last layer by TiM4Rec (see time_factor)
        self.ssd_backend = ssd_backend  # requested: auto | torch | triton
        self._resolved = {}  # device type -> backend actually used
        conv_dim = self.d_inner + 2 * d_state  # one group of B/C shared by all heads

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=True)
        self.conv1d = CausalDepthwiseConv1d(conv_dim, d_conv)
        self.act = ACTIVATIONS[activation]()
        # SSD parameters (not touched by the model's apply(init)), Mamba-2's initialisation
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1.0, 16.0)))
        dt0 = torch.exp(torch.empty(self.nheads).uniform_(math.log(1e-3), math.log(1e-1))).clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt0 + torch.log(-torch.expm1(-dt0)))  # inverse softplus
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm_weight = nn.Parameter(torch.ones(self.d_inner))  # gated RMSNorm weight
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=True)

        if is_time:
            # MLP and gate act along the sequence axis (L -> L), weights shared by the heads
            self.time_mlp = nn.Sequential(
                Dropout(time_drop_out, fast_dropout), nn.Linear(max_len, max_len), nn.SiLU(), nn.Linear(max_len, max_len)
            )
            self.time_conv1 = CausalDepthwiseConv1d(self.nheads, d_conv)
            self.time_conv2 = CausalDepthwiseConv1d(self.nheads, d_conv)
            self.time_gate = nn.Sequential(
                Dropout(time_drop_out, fast_dropout), nn.Linear(max_len, max_len if p2p_residual else 1)
            )
            self.time_norm = nn.LayerNorm(max_len, eps=norm_eps)

    def backend_for(self, device):
        key = torch.device(device).type
        if key not in self._resolved:
            self._resolved[key] = resolve_ssd_backend(self.ssd_backend, device)
        return self._resolved[key]

    def time_factor(self, T, valid):
        """(U, T_next) from the time feature T (B, H, L), in fp32 whatever the autocast state.

        T_next is None when ``emits_time`` is off (the last layer: no layer reads its time output, so its
        gate and norm would only cost time; they get no gradient either way)."""
        with torch.autocast(device_type=T.device.type, enabled=False):
            T = at_least_fp32(T)
            U = T * self.time_mlp(T)
            U = self.act(self.time_conv2(self.act(self.time_conv1(U))))
            if not self.emits_time:
                return U, None
            G = torch.sigmoid(self.time_gate(T))
            T_next = masked_layer_norm(G * T + (1.0 - G) * U, self.time_norm, valid)
        return U, T_next

    def forward(self, X, T=None, valid=None, last=None):
        """X (B, L, d), T (B, H, L) or None, valid (B, 1, L) bool or None -> (O (B, L, d), T_next).

        With ``last`` ((B,) positions) only the output row ``O[b, last[b]]`` is computed, (B, d): the
        gate z and C are read at that row only and the scan is :func:`ssd_last` (the last layer's case:
        the loss and the scores read one row)."""
        batch, length, _ = X.shape
        if last is not None:
            return self._forward_last(X, T, valid, last)
        backend = self.backend_for(X.device)
        z, xBC, dt = torch.split(
            self.in_proj(X), [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], dim=-1
        )
        x, B, C, dt, T_next = self._mix_inputs(xBC, dt, T, valid)
        A = -torch.exp(at_least_fp32(self.A_log))
        y = ssd_scan(
            x.reshape(batch, length, self.nheads, self.head_dim),
            dt,
            A,
            B.reshape(batch, length, 1, self.d_state),
            C.reshape(batch, length, 1, self.d_state),
            self.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            backend=backend,
        ).reshape(batch, length, self.d_inner)
        y = gated_norm(y, z, self.norm_weight, self.norm_eps, backend=backend)
        return self.out_proj(y), T_next

    def _mix_inputs(self, xBC, dt, T, valid):
        """Local causal conv of xBC and the time factor on dt: (x, B, C, dt, T_next), every position."""
        xBC = self.act(self.conv1d(xBC.transpose(1, 2))).transpose(1, 2)
        T_next = None
        if self.is_time:
            U, T_next = self.time_factor(T, valid)
            dt = at_least_fp32(dt) * U.transpose(1, 2)  # time rescales dt before bias + softplus
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        return x, B, C, dt, T_next

    def _forward_last(self, X, T, valid, last):
        """``forward`` for the output rows ``last`` only: O (B, d).  The in-projection's z rows (the gate,
        read at the output row only) are applied to that row alone; x, B and dt are needed at every j <= i."""
        batch, length, _ = X.shape
        rows = torch.arange(batch, device=X.device)
        weight, bias = self.in_proj.weight, self.in_proj.bias
        d_in = self.d_inner
        z = F.linear(X[rows, last], weight[:d_in], None if bias is None else bias[:d_in])
        xBC, dt = torch.split(
            F.linear(X, weight[d_in:], None if bias is None else bias[d_in:]),
            [d_in + 2 * self.d_state, self.nheads], dim=-1,
        )
        x, B, C, dt, T_next = self._mix_inputs(xBC, dt, T, valid)
        y = ssd_last(
            x.reshape(batch, length, self.nheads, self.head_dim),
            softplus_dt(dt, self.dt_bias),
            -torch.exp(at_least_fp32(self.A_log)),
            B.reshape(batch, length, 1, self.d_state),
            C[rows, last].reshape(batch, 1, self.d_state),
            last,
            D=self.D,
        ).reshape(batch, d_in)
        return self.out_proj(gated_rms_norm(y, z, self.norm_weight, self.norm_eps)), T_next


class TiM4RecLayer(nn.Module):
    """TiSSD -> (residual +) LayerNorm -> optional position-wise FFN with residual + LayerNorm."""

    def __init__(self, d_model, dropout_prob, norm_eps, residual, is_ffn, **ssd_kwargs):
        super().__init__()
        self.tissd = TiSSD(d_model, norm_eps=norm_eps, **ssd_kwargs)
        self.dropout = Dropout(dropout_prob, ssd_kwargs["fast_dropout"])
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.residual = residual
        self.is_ffn = is_ffn
        if is_ffn:
            self.ffn = nn.Sequential(
                nn.Linear(d_model, 4 * d_model),
                nn.Hardswish(),
                Dropout(dropout_prob, ssd_kwargs["fast_dropout"]),
                nn.Linear(4 * d_model, d_model),
                Dropout(dropout_prob, ssd_kwargs["fast_dropout"]),
            )
            self.ffn_norm = nn.LayerNorm(d_model, eps=FFN_NORM_EPS)

    def forward(self, X, T=None, valid=None, last=None):
        """(B, L, d) hidden states, or (B, d) at the rows ``last`` only (see ``TiSSD.forward``)."""
        out, T_next = self.tissd(X, T, valid, last)
        out = self.dropout(out)
        if last is not None:
            X = X[torch.arange(X.shape[0], device=X.device), last]
        hidden = self.norm(out + X if self.residual else out)
        if self.is_ffn:
            hidden = self.ffn_norm(self.ffn(hidden) + hidden)
        return hidden, T_next


class TiM4Rec(SequentialRecommender):
    """TiM4Rec (time-aware SSD) as a RecBole sequential recommender; see the module docstring."""

    needs_fields = ("TIME_FIELD",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check = ConfigChecks("TiM4Rec", config)
        self.hidden_size = check.positive_int("hidden_size")
        self.num_layers = check.positive_int("num_layers")
        self.dropout_prob = check.probability("dropout_prob")
        self.time_drop_out = check.probability("time_drop_out")
        self.d_state = check.positive_int("d_state")
        self.d_conv = check.positive_int("d_conv")
        self.expand = check.positive_int("expand")
        self.head_dim = check.positive_int("head_dim", "official: H = expand*hidden_size/head_dim = 4")
        self.chunk_size = check.positive_int("chunk_size")
        self.norm_eps = check.number("norm_eps", "official: 1e-12..1e-5", low=0)
        self.is_time = check.boolean("is_time")
        self.is_ffn = check.boolean("is_ffn")
        self.p2p_residual = check.boolean("p2p_residual")
        self.is_kai_ming_init = check.boolean("is_kai_ming_init")
        self.time_mask_padding = check.boolean("time_mask_padding")
        self.time_transform = check.one_of(
            "time_transform", TIME_TRANSFORMS, "raw = official gaps in seconds, log = sign * log(1 + |gap|)",
            default="raw", normalise=str.lower)
        self.conv_activation = check.one_of("conv_activation", sorted(ACTIVATIONS), normalise=str.lower)
        self.ssd_backend = check.one_of("ssd_backend", SSD_BACKENDS, normalise=str.lower)
        self.fast_dropout = check.boolean("fast_dropout", default=True)
        # full-softmax cross-entropy only, as the official code
        check.loss_type(("CE",), default="CE")
        d_inner = self.expand * self.hidden_size
        check.divides("expand * hidden_size", "head_dim", d_inner, self.head_dim)
        self.nheads = d_inner // self.head_dim
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"]

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        # shared by item embeddings and time gaps (official)
        self.dropout = Dropout(self.dropout_prob, self.fast_dropout)
        self.emb_norm = nn.LayerNorm(self.hidden_size, eps=self.norm_eps)
        if self.is_time:
            self.time_norm = nn.LayerNorm(self.max_seq_length, eps=self.norm_eps)  # over the sequence axis
        self.layers = nn.ModuleList(
            TiM4RecLayer(
                self.hidden_size,
                dropout_prob=self.dropout_prob,
                norm_eps=self.norm_eps,
                residual=self.num_layers > 1,
                is_ffn=self.is_ffn,
                d_state=self.d_state,
                d_conv=self.d_conv,
                expand=self.expand,
                head_dim=self.head_dim,
                chunk_size=self.chunk_size,
                max_len=self.max_seq_length,
                is_time=self.is_time,
                p2p_residual=self.p2p_residual,
                time_drop_out=self.time_drop_out,
                activation=self.conv_activation,
                ssd_backend=self.ssd_backend,
                fast_dropout=self.fast_dropout,
            )
            for _ in range(self.num_layers)
        )
        self.layers[-1].tissd.emits_time = False  # nothing reads the last layer's time output
        self.loss_fct = nn.CrossEntropyLoss()
        self.apply(self._init_weights)

        # resolve (and log) the SSD backend for the configured device now, so that an impossible
        # `ssd_backend: triton` fails before training starts
        device = config["device"] if config["device"] is not None else "cpu"
        _, line = describe_backend_choice(self.ssd_backend, device)
        self.logger.info(line)

    def _init_weights(self, module):
        """Official init: N(0, 0.02) for Linear/Embedding (PAD row included), zero Linear biases,
        Kaiming(fan_out, relu) convs if ``is_kai_ming_init`` (else PyTorch's default), unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Conv1d):
            if self.is_kai_ming_init:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def time_feature(self, time_seq, valid):
        """T0 (B, H, L): LN over the sequence axis of the consecutive gaps (fp32; raw units, or
        sign * log(1 + |gap|) with ``time_transform: log``)."""
        with torch.autocast(device_type=time_seq.device.type, enabled=False):
            # gaps from float64 times (the package keeps TIME_FIELD float64: float32 is 64-128 s apart at
            # Unix-seconds scale), then in the model's dtype: fp32, or fp64 when the model itself is fp64
            t = time_seq.to(torch.float64)
            gaps = torch.cat([torch.zeros_like(t[:, :1]), t[:, 1:] - t[:, :-1]], dim=1)
            if self.time_transform == "log":  # (the boundary gap -t_n stays negative: log-scaled, not dropped)
                gaps = torch.sign(gaps) * torch.log1p(gaps.abs())
            gaps = gaps.to(at_least_fp32(self.time_norm.weight).dtype)
            if valid is not None:
                gaps = gaps * valid[:, 0].to(gaps.dtype)  # drops the boundary gap -t_n and later zeros
            tau = masked_layer_norm(self.dropout(gaps), self.time_norm, None if valid is None else valid[:, 0])
        return tau.unsqueeze(1).expand(-1, self.nheads, -1)

    def forward(self, item_seq, item_seq_len, time_seq=None):
        """User representations r = X[n - 1] (B, d).

        The last layer computes its output at position n - 1 only (``TiSSD._forward_last``): the same r as
        ``encode(...)[n - 1]`` (tested), without the L - 1 rows nobody reads (its out-projection, FFN and
        most of the scan).  Dropout inside that layer then draws masks for the one row, another random
        stream than the full encoding's, the same distribution for every value r depends on."""
        X, T, valid = self._embed(item_seq, item_seq_len, time_seq)
        for layer in self.layers[:-1]:
            X, T = layer(X, T, valid)
        return self.layers[-1](X, T, valid, last=item_seq_len - 1)[0]

    def encode(self, item_seq, item_seq_len, time_seq=None):
        """Hidden states at every position (B, L, d): the reference ``forward`` is tested against."""
        X, T, valid = self._embed(item_seq, item_seq_len, time_seq)
        for layer in self.layers:
            X, T = layer(X, T, valid)
        return X

    def _embed(self, item_seq, item_seq_len, time_seq):
        """(X0, T0, valid): the embedded items, the time feature (None when time-blind) and the padding mask
        (None unless ``time_mask_padding``)."""
        if item_seq.shape[1] != self.max_seq_length:
            raise ModelConfigError(
                f"TiM4Rec: got sequences of length {item_seq.shape[1]}, but the time branch is built for "
                f"MAX_ITEM_LIST_LENGTH={self.max_seq_length} (its LayerNorm/Linear act over the sequence axis)."
            )
        X = self.emb_norm(self.dropout(self.item_embedding(item_seq)))
        T = valid = None
        if self.is_time:
            if time_seq is None:
                raise MissingFieldError(f"TiM4Rec with is_time: True needs the `{self.TIME_SEQ}` field.")
            if self.time_mask_padding:
                positions = torch.arange(item_seq.shape[1], device=item_seq.device)
                valid = (positions[None, :] < item_seq_len[:, None]).unsqueeze(1)  # (B, 1, L)
            T = self.time_feature(time_seq, valid)
        return X, T, valid

    def _encode(self, interaction):
        time_seq = interaction[self.TIME_SEQ] if self.is_time else None
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], time_seq)

    def calculate_loss(self, interaction):
        seq_output = self._encode(interaction)
        logits = torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))
        return self.loss_fct(logits.float(), interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        seq_output = self._encode(interaction)
        test_item_emb = self.item_embedding(interaction[self.ITEM_ID])
        return torch.mul(seq_output, test_item_emb).sum(dim=1)

    def full_sort_predict(self, interaction):
        seq_output = self._encode(interaction)
        return torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))
