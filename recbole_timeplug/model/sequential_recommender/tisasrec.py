"""TiSASRec: time-interval-aware self-attention for sequential recommendation.

Li, Wang & McAuley, "Time Interval Aware Self-Attention for Sequential Recommendation", WSDM 2020.
Follows the authors' TensorFlow code (github.com/JiachengLi1995/TiSASRec); the attention maths is in
:mod:`recbole_timeplug.layers.time_interval`, the longer account in ``docs/models.md`` §1.

Equations implemented (d = ``hidden_size``, n = history length, L = ``MAX_ITEM_LIST_LENGTH``, k = ``time_span``):

* Personalised intervals R_ij = min(floor(|t_i - t_j| / r_u), k) (paper §3.2), float64 -> int64 in [0, k].
  **r_u for a RecBole sample** (``time_scale``):

  - ``user_min_history`` (default): the smallest non-zero gap between consecutive items of the history
    *this sample can see* (its last <= L items before the target). Every sample is scaled by information
    it is allowed to use, so nothing from the target, the validation or the test item leaks in. r_u of a
    user therefore may shrink as the history grows (a later sample can contain a smaller gap).
  - ``user_min_train``: one r_u per user from all its training gaps (official code used the whole
    sequence, incl. valid/test items - a small leak; this keeps the spirit without it).
  - ``none``: r = ``time_unit`` for everyone (``time_unit: 1`` = TiM4Rec's RecBole baseline, raw units).

* Embedding layer: E = sqrt(d) * M^I[s] (PAD row zero), dropout, zeroed at padding; absolute positions as
  separate key/value tables P^K, P^V inside attention (paper eq. 5-6), indexed like the official
  left-padded windows: the most recent item is slot L-1 (slot = L - n + i); interval tables M^RK, M^RV
  with k+1 rows. Dropout (rate ``dropout_prob``) on E, P^K, P^V and the interval embeddings.
* Block (official code, not RecBole's SASRec block): X^ = LN(X); Q = X^W_Q, K = XW_K, V = XW_V;
  e_ij = (Q_i.K_j + Q_i.P^K_j + Q_i.R^K_ij)/sqrt(d/h) with causal + padded-*key* mask; dropout on the
  softmax weights; z_i = sum_j a_ij (V_j + P^V_j + R^V_ij); no output projection; X = X^ + z;
  FFN pre-LN: X = LN(X) + Dropout(W_2 Dropout(ReLU(W_1 LN(X)))) with d x d layers; X zeroed at padding.
  Final F = LN(X); user representation F at position n-1; score of item i = F . M^I_i. The last block
  computes row n-1 only (its queries and FFN; docs/models.md §1.4); ``forward`` without ``last`` gives every row.
* Losses (``loss_type``): ``CE`` over all items (default; the project's common protocol), ``BPR`` and the
  paper's ``BCE`` (-log s(r_pos) - log(1 - s(r_neg)), one uniform negative per sample), plus the paper's
  L2 on the five embedding tables (``l2_emb`` * sum ||W||^2, the official code's Keras ``l2`` regulariser).

Deviations from the official code, all documented in the README paragraph and the YAML:

* Attention is "bucketed" (docs/models.md §1.4), never building B x L x L x d tensors; identical to the paper in
  eval. Training-time dropout on interval embeddings is then per (sample, bucket, channel) instead of per
  (pair, channel): ``interval_dropout: bucket`` (default). ``interval_dropout: pair`` restores the
  official per-pair dropout by training with the naive (memory-hungry) formulation. With ``bucket``,
  ``interval_mask: used`` (default) draws masks only for the buckets each sample uses (per-sample
  tables of the used rows); ``table`` draws them for all k+1 rows (the earlier random stream; the
  distribution of every used mask is the same).
* Right padding with a key-padding mask instead of left padding (RecBole's format); padded keys are
  masked (pmixer's port masks queries instead - a bug).
* In RecBole every training sample is one prefix with one target, so ``BCE`` gives each consecutive pair
  of a training sequence one term per epoch, like the paper's all-positions loss; but a pair's context is
  always "most recent item at slot L-1" and pairs older than the last L training items are also trained.
"""

import math

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from recbole.utils import InputType
from torch import nn

from recbole_timeplug.layers.time_interval import (
    INTERVAL_ROUNDINGS,
    TIME_SCALES,
    bucketed_interval_attention,
    history_mask,
    interval_matrix,
    min_nonzero_gap,
    naive_interval_attention,
    pair_embeddings,
    used_buckets,
    user_min_gap_table,
)
from recbole_timeplug.validation import ConfigChecks

LOSS_TYPES = ("CE", "BPR", "BCE")
INTERVAL_DROPOUTS = ("bucket", "pair")
INTERVAL_MASKS = ("used", "table")
INITIALIZERS = ("xavier_uniform", "normal")


class TimeIntervalAttention(nn.Module):
    """One multi-head time-interval attention layer: Q/K/V projections (with bias), no output projection."""

    def __init__(self, hidden_size, n_heads, dropout_prob):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(dropout_prob)

    def forward(self, queries, keys, pos_key, pos_value, interval_key, interval_value, intervals, allowed, naive):
        q, k, v = self.query(queries), self.key(keys), self.value(keys)
        if naive:  # interval_key/value are per-pair [B,L,L,d] tensors
            return naive_interval_attention(
                q, k, v, pos_key, pos_value, interval_key, interval_value, allowed, self.n_heads, self.attn_dropout
            )
        return bucketed_interval_attention(
            q, k, v, pos_key, pos_value, interval_key, interval_value, intervals, allowed, self.n_heads,
            self.attn_dropout,
        )


class PointWiseFeedForward(nn.Module):
    """Official FFN: two d x d layers (kernel-1 convolutions in TF), ReLU, dropout after each, residual."""

    def __init__(self, hidden_size, dropout_prob):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, x):
        return x + self.dropout(self.fc2(self.dropout(torch.relu(self.fc1(x)))))


class TiSASRecBlock(nn.Module):
    def __init__(self, hidden_size, n_heads, dropout_prob, eps):
        super().__init__()
        self.attention_layernorm = nn.LayerNorm(hidden_size, eps=eps)
        self.attention = TimeIntervalAttention(hidden_size, n_heads, dropout_prob)
        self.forward_layernorm = nn.LayerNorm(hidden_size, eps=eps)
        self.feed_forward = PointWiseFeedForward(hidden_size, dropout_prob)

    def forward(self, x, valid, pos_key, pos_value, interval_key, interval_value, intervals, allowed, naive,
                last=None):
        """``[B, L, d]``; with ``last`` ((B,) positions) the output rows ``last`` only, ``[B, d]``: the
        queries are those rows (keys and values stay every position), and the FFN is position-wise."""
        if last is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            normed = self.attention_layernorm(x[rows, last]).unsqueeze(1)  # [B, 1, d]
            intervals, allowed = intervals[rows, last].unsqueeze(1), allowed[rows, last].unsqueeze(1)
            if naive:  # per-pair [B, L, L, d] tensors: the queries' rows
                interval_key = interval_key[rows, last].unsqueeze(1)
                interval_value = interval_value[rows, last].unsqueeze(1)
            valid = valid[rows, last].unsqueeze(1)
        else:
            normed = self.attention_layernorm(x)
        # queries from LN(X), keys/values from the un-normalised X; residual to LN(X) (official code)
        z = self.attention(normed, x, pos_key, pos_value, interval_key, interval_value, intervals, allowed, naive)
        x = normed + z
        x = self.feed_forward(self.forward_layernorm(x))
        x = x * valid.unsqueeze(-1)
        return x if last is None else x[:, 0]


class TiSASRec(SequentialRecommender):
    r"""TiSASRec on RecBole's right-padded sequences; see the module docstring for the equations."""

    needs_fields = ("TIME_FIELD",)
    # RecBole derives the input type from loss_type only for CE/BPR. PAIRWISE lets BCE/BPR receive the
    # sampled negative; under CE no negatives are sampled (train_neg_sample_args: ~), so batches are the
    # same as POINTWISE ones.
    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check = ConfigChecks("TiSASRec", config)
        self.hidden_size = check.positive_int("hidden_size")
        self.n_layers = check.positive_int("n_layers")
        self.n_heads = check.positive_int("n_heads")
        check.divides("hidden_size", "n_heads", self.hidden_size, self.n_heads)
        self.dropout_prob = check.probability("dropout_prob")
        self.time_span = check.positive_int(
            "time_span", "the largest interval bucket k; paper: 256; 0 = intervals off, the time-blind twin", minimum=0
        )
        self.time_scale = check.one_of("time_scale", TIME_SCALES)
        self.time_unit = config["time_unit"]
        if self.time_scale == "none":
            self.time_unit = check.number("time_unit", "with time_scale: none, the divisor, e.g. 86400 for days", low=0)
        self.interval_dropout = check.one_of("interval_dropout", INTERVAL_DROPOUTS)
        self.interval_rounding = check.one_of(
            "interval_rounding", INTERVAL_ROUNDINGS, "floor: the paper's floor(|dt| / r); official: the code's", default="floor"
        )
        self.interval_mask = check.one_of(
            "interval_mask", INTERVAL_MASKS,
            "with interval_dropout bucket: draw masks for the buckets a sample uses (used) or for all k+1 (table)",
        )
        self.layer_norm_eps = check.number("layer_norm_eps", low=0)
        self.initializer = check.one_of("initializer", INITIALIZERS)
        self.initializer_range = config["initializer_range"]
        self.loss_type = check.loss_type(LOSS_TYPES)
        self.l2_emb = config["l2_emb"] or 0.0

        self.TIME_FIELD = config["TIME_FIELD"]
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"]
        self.USER_ID = config["USER_ID_FIELD"]

        d, k = self.hidden_size, self.time_span
        self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
        self.position_key_embedding = nn.Embedding(self.max_seq_length, d)
        self.position_value_embedding = nn.Embedding(self.max_seq_length, d)
        self.interval_key_embedding = nn.Embedding(k + 1, d)
        self.interval_value_embedding = nn.Embedding(k + 1, d)
        self.emb_dropout = nn.Dropout(self.dropout_prob)
        self.blocks = nn.ModuleList(
            TiSASRecBlock(d, self.n_heads, self.dropout_prob, self.layer_norm_eps) for _ in range(self.n_layers)
        )
        self.last_layernorm = nn.LayerNorm(d, eps=self.layer_norm_eps)

        if self.time_scale == "user_min_train":
            self.register_buffer("user_min_gap", self._train_user_min_gap(dataset), persistent=True)
        if self.loss_type == "BPR":
            self.bpr_loss = BPRLoss()

        self.apply(self._init_weights)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()  # PAD row is zero (official zero_pad)

    # ------------------------------------------------------------------------------ setup
    def _train_user_min_gap(self, dataset):
        inter = dataset.inter_feat
        last = self.gather_indexes(inter[self.TIME_SEQ].unsqueeze(-1), inter[self.ITEM_SEQ_LEN] - 1).squeeze(-1)
        return user_min_gap_table(inter[self.USER_ID], last, inter[self.TIME_FIELD], dataset.user_num)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if self.initializer == "xavier_uniform":  # official TF: glorot_uniform everywhere, zero biases
                nn.init.xavier_uniform_(module.weight)
            else:  # RecBole's convention
                module.weight.data.normal_(mean=0.0, std=self.initializer_range)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    # ------------------------------------------------------------------------------ model
    def time_divisor(self, time_seq, item_seq_len, user=None):
        """r_u for each sample (float64 ``[B]``), per ``time_scale``."""
        if self.time_scale == "user_min_history":
            return min_nonzero_gap(time_seq, item_seq_len)
        if self.time_scale == "user_min_train":
            if user is None:
                raise ValueError("TiSASRec: time_scale user_min_train needs the user ids of the batch.")
            return self.user_min_gap[user]
        return torch.full(item_seq_len.shape, float(self.time_unit), dtype=torch.float64, device=time_seq.device)

    def intervals(self, time_seq, item_seq_len, user=None):
        with torch.no_grad():
            divisor = self.time_divisor(time_seq, item_seq_len, user)
            return interval_matrix(time_seq, item_seq_len, divisor, self.time_span, self.interval_rounding)

    def forward(self, item_seq, item_seq_len, time_seq, user=None, last=None):
        """Hidden states ``[B, L, d]`` (real positions only are meaningful); with ``last`` ((B,) positions)
        the states at those positions only, ``[B, d]``, the last block computing just those rows (its
        queries, FFN and dropout masks; the same values as the full states gathered there, tested)."""
        batch, width = item_seq.shape
        valid = history_mask(item_seq_len, width)
        arange = torch.arange(width, device=item_seq.device)
        # official left-padded slot of each real item: the most recent one sits at slot L-1
        slots = arange.unsqueeze(0) + (self.max_seq_length - item_seq_len).unsqueeze(1)
        slots = slots.clamp(0, self.max_seq_length - 1)
        slots = slots.masked_fill(~valid, 0)

        x = self.item_embedding(item_seq) * math.sqrt(self.hidden_size)
        x = self.emb_dropout(x) * valid.unsqueeze(-1)
        pos_key = self.emb_dropout(self.position_key_embedding(slots))
        pos_value = self.emb_dropout(self.position_value_embedding(slots))

        intervals = self.intervals(time_seq, item_seq_len, user)
        # causal (j <= i) and real keys; with right padding the key mask only matters for padded queries
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool, device=item_seq.device))
        allowed = causal.unsqueeze(0) & valid.unsqueeze(1)

        dropping = self.training and self.dropout_prob > 0
        naive = dropping and self.interval_dropout == "pair"
        rows = None
        if dropping and not naive and self.interval_mask == "used":
            # one mask per (sample, bucket, channel), shared by the pairs of that bucket, drawn only for the
            # buckets the sample uses: per-sample tables [B, u, d] indexed by renumbered intervals. Same
            # distribution of every used (sample, bucket, channel) mask as "table", another random stream.
            # rows None: the batch uses nearly every bucket, so the full tables are kept
            intervals, rows = used_buckets(intervals, self.time_span + 1)
        if naive:  # official: independent dropout on every pair's interval embedding (B x L x L x d)
            interval_key = self.emb_dropout(pair_embeddings(intervals, self.interval_key_embedding.weight))
            interval_value = self.emb_dropout(pair_embeddings(intervals, self.interval_value_embedding.weight))
        elif dropping and rows is not None:
            interval_key = self.emb_dropout(F.embedding(rows, self.interval_key_embedding.weight))
            interval_value = self.emb_dropout(F.embedding(rows, self.interval_value_embedding.weight))
        elif dropping:  # one [B, k+1, d] mask per table ("table", or "used" on a batch using most buckets)
            interval_key = self.emb_dropout(self.interval_key_embedding.weight.expand(batch, -1, -1))
            interval_value = self.emb_dropout(self.interval_value_embedding.weight.expand(batch, -1, -1))
        else:
            interval_key = self.interval_key_embedding.weight
            interval_value = self.interval_value_embedding.weight

        # the dropped embeddings are computed once and shared by all blocks, as in the official code
        for i, block in enumerate(self.blocks):
            rows = last if i == len(self.blocks) - 1 else None
            x = block(x, valid, pos_key, pos_value, interval_key, interval_value, intervals, allowed, naive, rows)
        return self.last_layernorm(x)

    def _user_representation(self, interaction):
        user = interaction[self.USER_ID] if self.time_scale == "user_min_train" else None
        seq_len = interaction[self.ITEM_SEQ_LEN]
        return self.forward(interaction[self.ITEM_SEQ], seq_len, interaction[self.TIME_SEQ], user, last=seq_len - 1)

    def _l2_embeddings(self):
        tables = (
            self.item_embedding,
            self.position_key_embedding,
            self.position_value_embedding,
            self.interval_key_embedding,
            self.interval_value_embedding,
        )
        return self.l2_emb * sum(t.weight.pow(2).sum() for t in tables)  # Keras l2: lambda * sum w^2, no /2

    def calculate_loss(self, interaction):
        rep = self._user_representation(interaction)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "CE":
            logits = rep @ self.item_embedding.weight.t()
            logits[:, 0] = -math.inf  # PAD is never a target; keeps its row at zero
            loss = F.cross_entropy(logits, pos_items)
        else:
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = (rep * self.item_embedding(pos_items)).sum(-1)
            neg_score = (rep * self.item_embedding(neg_items)).sum(-1)
            if self.loss_type == "BPR":
                loss = self.bpr_loss(pos_score, neg_score)
            else:  # BCE: -log sigmoid(pos) - log(1 - sigmoid(neg))
                loss = (F.softplus(-pos_score) + F.softplus(neg_score)).mean()
        if self.l2_emb:
            loss = loss + self._l2_embeddings()
        return loss

    def predict(self, interaction):
        rep = self._user_representation(interaction)
        return (rep * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self._user_representation(interaction) @ self.item_embedding.weight.t()
