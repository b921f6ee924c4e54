"""MASAN: Multi-interest Aware (adaptive) Self-Attention Network for sequential recommendation.

Reference: the MASAN repository (github.com/JXY66/MASAN: RecBole 0.1.1 launchers, README and 7 training
logs; **no model code was ever published**) and the accompanying thesis abstract.  What the logs prove
(``docs/models.md`` §3.1): MASAN is LightSANs (Fan et al., "Lighter and Better:
Low-Rank Decomposed Self-Attention Networks for Next-Item Recommendation", SIGIR 2021) with one extra
``alpha_w: Linear(d, 1)`` per attention layer feeding alpha-entmax (the DSAN mechanism, Yuan et al. AAAI
2021) and an (L+1)-row position table.

Equations (``docs/models.md`` §3.2; B batch, L max length, d hidden, h heads, k interests):

    X^0 = Dropout(LN(E_item[seq]))                                  (no position vector is added)
    per layer, input H:
      alpha_b = 1 + sigmoid(w_alpha . c_b + beta)      c_b = H_b[len_b - 1] (alpha_pool: last)
      Q, K, V = H W_q, H W_k, H W_v
      K~ = softmax_L(K Theta_K)^T K,  V~ = softmax_L(V Theta_V)^T V      (item-to-interest, [B, k, d])
      A_h = alpha_b-entmax over the query axis (dim -2) of Q_h K~_h^T / sqrt(d_h)
      G_h = softmax over dim -2 of (LN(P) W_pq)_h (LN(P) W_pk)_h^T / (d_h sqrt 2)   (decoupled position)
      H' = LN(H + Dropout(concat_h(Dropout(A_h) V~_h + G_h V_h) W_o))
      H'' = LN(H' + Dropout(W_2 gelu(W_1 H')))
    s_b = H^(n_layers)_b[len_b - 1],  y_{b,i} = s_b . E_item[i]     (CE over all items, or BPR)

Parts no source pins down ([reconstructed], ``docs/models.md`` §3.3) sit behind switches:
``alpha_mode`` (adaptive | fixed | softmax), ``alpha_pool`` (last | mean), ``entmax_dim`` (-2 | -1),
``entmax_on_aggregation`` / ``entmax_on_position`` (False), ``mask_padding`` (True; LightSANs masks
nothing), ``pos_index_mode`` (absolute | padded) with ``extra_position_row`` (True: L+1 rows as logged;
False: LightSANs' L rows), ``use_user_pref`` (False: the thesis' user-global-preference gate, absent
from every log).  With ``alpha_mode: softmax``, ``mask_padding: False``, ``extra_position_row: False``
this is RecBole's ``LightSANs`` exactly (same parameter names; tested by loading one state dict into the
other).  alpha-entmax and its fast Newton path live in ``recbole_timeplug/layers/sparse_attention.py``.
"""

import copy

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import FeedForward
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_timeplug.layers.sparse_attention import (
    ENTMAX_IMPLS,
    AdaptiveLightMultiHeadAttention,
    Normaliser,
)
from recbole_timeplug.validation import ConfigChecks

ALPHA_MODES = ("adaptive", "fixed", "softmax")
POS_INDEX_MODES = ("absolute", "padded")
ALPHA_POOLS = ("last", "mean")


class MASANTransformerLayer(nn.Module):
    """Adaptive low-rank attention + RecBole's point-wise feed-forward (names as ``LightTransformerLayer``)."""

    def __init__(self, hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps, **attention):
        super().__init__()
        self.multi_head_attention = AdaptiveLightMultiHeadAttention(
            hidden_size=hidden_size,
            hidden_dropout_prob=hidden_dropout_prob,
            layer_norm_eps=layer_norm_eps,
            **attention,
        )
        self.feed_forward = FeedForward(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)

    def forward(self, hidden_states, pos_emb, item_seq_len):
        return self.feed_forward(self.multi_head_attention(hidden_states, pos_emb, item_seq_len))


class MASANEncoder(nn.Module):
    """``n_layers`` independent copies of :class:`MASANTransformerLayer` (names as ``LightTransformerEncoder``)."""

    def __init__(self, n_layers, **layer_args):
        super().__init__()
        layer = MASANTransformerLayer(**layer_args)
        self.layer = nn.ModuleList([copy.deepcopy(layer) for _ in range(n_layers)])

    def forward(self, hidden_states, pos_emb, item_seq_len):
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, pos_emb, item_seq_len)
        return hidden_states


class MASAN(SequentialRecommender):
    r"""LightSANs with per-layer, per-sequence adaptive alpha-entmax item-interest attention."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check = ConfigChecks("MASAN", config)
        self.n_layers = check.positive_int("n_layers")
        self.n_heads = check.positive_int("n_heads")
        self.k_interests = check.positive_int("k_interests")
        self.hidden_size = check.positive_int("hidden_size")
        check.divides("hidden_size", "n_heads", self.hidden_size, self.n_heads)
        self.inner_size = check.positive_int("inner_size")
        self.hidden_dropout_prob = check.probability("hidden_dropout_prob")
        self.attn_dropout_prob = check.probability("attn_dropout_prob")
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = check.number("layer_norm_eps", low=0)
        self.initializer_range = config["initializer_range"]
        self.loss_type = check.loss_type(("CE", "BPR"))

        self.alpha_mode = check.one_of("alpha_mode", ALPHA_MODES)
        self.alpha_min = check.number(
            "alpha_min", "e.g. 1.0001; alpha = 1 makes entmax uniform", low=1.0, high=2.0, high_open=True
        )
        self.entmax_alpha = config["entmax_alpha"]
        if self.alpha_mode == "fixed":
            self.entmax_alpha = check.number(
                "entmax_alpha", "for softmax use alpha_mode: softmax", low=1.0, high=2.0
            )
        self.alpha_pool = check.one_of("alpha_pool", ALPHA_POOLS, "last real item or mean of real items")
        self.entmax_impl = check.one_of("entmax_impl", ENTMAX_IMPLS)
        if self.entmax_impl == "sort" and not (self.alpha_mode == "fixed" and self.entmax_alpha in (1.5, 2.0)):
            raise check.error(
                "entmax_impl", "sort", "the exact sort path needs alpha_mode: fixed with entmax_alpha 1.5 or 2; "
                "use entmax_impl: newton for adaptive alpha"
            )
        self.entmax_n_iter = check.positive_int("entmax_n_iter")
        self.entmax_newton_iter = check.positive_int("entmax_newton_iter")
        self.entmax_newton_tol = check.number(
            "entmax_newton_tol", "stop Newton once every step is <= this; 0 = always entmax_newton_iter steps",
            low=0.0, low_open=False,
        )
        self.entmax_dim = check.one_of("entmax_dim", (-2, -1), "-2: over the sequence axis (LightSANs); -1: over interests")
        self.entmax_on_aggregation = check.boolean("entmax_on_aggregation")
        self.entmax_on_position = check.boolean("entmax_on_position")
        self.mask_padding = check.boolean("mask_padding")
        self.pos_index_mode = check.one_of("pos_index_mode", POS_INDEX_MODES)
        self.extra_position_row = check.boolean("extra_position_row")
        if self.pos_index_mode == "padded" and not self.extra_position_row:
            raise check.error(
                "extra_position_row", False, "pos_index_mode 'padded' needs the (L+1)-row table: set it True"
            )
        self.use_user_pref = check.boolean("use_user_pref")

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        # MASAN's logs print Embedding(L + 1, d); LightSANs has L rows
        n_positions = self.max_seq_length + (1 if self.extra_position_row else 0)
        self.position_embedding = nn.Embedding(n_positions, self.hidden_size)
        n_iter = self.entmax_newton_iter if self.entmax_impl == "newton" else self.entmax_n_iter
        self.trm_encoder = MASANEncoder(
            n_layers=self.n_layers,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            n_heads=self.n_heads,
            k_interests=self.k_interests,
            attn_dropout_prob=self.attn_dropout_prob,
            alpha_mode=self.alpha_mode,
            entmax_alpha=self.entmax_alpha,
            alpha_min=self.alpha_min,
            alpha_pool=self.alpha_pool,
            entmax_dim=self.entmax_dim,
            entmax_on_aggregation=self.entmax_on_aggregation,
            entmax_on_position=self.entmax_on_position,
            mask_padding=self.mask_padding,
            normaliser=Normaliser(self.entmax_impl, n_iter, self.entmax_newton_tol if self.entmax_impl == "newton" else 0.0),
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)

        if self.use_user_pref:  # [reconstructed] thesis' user global preference: gated mix of s_b and e_u
            self.n_users = dataset.num(self.USER_ID)
            self.user_embedding = nn.Embedding(self.n_users, self.hidden_size)
            self.user_gate = nn.Linear(2 * self.hidden_size, self.hidden_size)

        self.loss_fct = BPRLoss() if self.loss_type == "BPR" else nn.CrossEntropyLoss()

        self.apply(self._init_weights)  # Theta_K / Theta_V stay std-1 (raw Parameters), as in LightSANs

    def _init_weights(self, module):
        """N(0, initializer_range) for Linear/Embedding weights, zero biases, LayerNorm (1, 0) - LightSANs'."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def position_embeddings(self, item_seq, item_seq_len):
        """[L, d] shared table rows (absolute: row j for slot j) or [B, L, d] (padded: 0 = pad, 1..len)."""
        seq_len = item_seq.size(1)
        if self.pos_index_mode == "absolute":
            return self.position_embedding(torch.arange(seq_len, device=item_seq.device))
        slots = torch.arange(seq_len, device=item_seq.device).unsqueeze(0)
        position_ids = torch.where(slots < item_seq_len.unsqueeze(1), slots + 1, torch.zeros_like(slots))
        return self.position_embedding(position_ids)

    def forward(self, item_seq, item_seq_len, user=None):
        item_emb = self.dropout(self.LayerNorm(self.item_embedding(item_seq)))
        pos_emb = self.position_embeddings(item_seq, item_seq_len)
        output = self.trm_encoder(item_emb, pos_emb, item_seq_len)
        seq_output = self.gather_indexes(output, item_seq_len - 1)  # last real item (right padding)
        if self.use_user_pref:
            user_emb = self.user_embedding(user)
            gate = torch.sigmoid(self.user_gate(torch.cat([seq_output, user_emb], dim=-1)))
            seq_output = gate * seq_output + (1 - gate) * user_emb
        return seq_output  # [B, d]

    def _seq_output(self, interaction):
        user = interaction[self.USER_ID] if self.use_user_pref else None
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], user)

    def calculate_loss(self, interaction):
        seq_output = self._seq_output(interaction)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = torch.sum(seq_output * self.item_embedding(pos_items), dim=-1)
            neg_score = torch.sum(seq_output * self.item_embedding(neg_items), dim=-1)
            return self.loss_fct(pos_score, neg_score)
        logits = torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))
        return self.loss_fct(logits, pos_items)

    def predict(self, interaction):
        seq_output = self._seq_output(interaction)
        test_item_emb = self.item_embedding(interaction[self.ITEM_ID])
        return torch.mul(seq_output, test_item_emb).sum(dim=1)

    def full_sort_predict(self, interaction):
        seq_output = self._seq_output(interaction)
        return torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))  # [B, n_items]
