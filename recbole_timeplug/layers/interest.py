"""Multi-interest extraction and interest routing (TiMiRec; also a ComiRec-SA+ extractor on its own).

Wang et al., "Target Interest Distillation for Multi-Interest Recommendation", CIKM 2022 (official code:
github.com/THUwangcy/ReChorus, branch ``CIKM22``).  Equations: ``docs/models.md`` §4.2-§4.4.

Notation: a history ``s_1..s_n`` (oldest -> newest) sits right-padded in a row of width ``L`` (RecBole's
layout: slot ``j`` < ``n`` holds ``s_{j+1}``, pads are item 0); ``E`` the item table, ``K`` interests.

* Reverse positions (§4.2):  ``pi_j = n - j`` for a real slot ``j`` (newest -> 1, oldest -> n), 0 for pads.
* Input:  ``x_j = E[s_j] + P[pi_j]`` (``add_pos``), then optionally one post-LN Transformer layer
  (:class:`InterestTransformerLayer`, ``add_trm``), then pad rows zeroed.  ``dropout_prob`` (0 in the official
  code, where nothing is dropped) drops ``x`` after the position sum and the attention and FFN outputs before
  their residual sums, as SASRec's hidden dropout does.
* Interest attention:  ``a_j = W_2 tanh(W_1 x_j + b_1) + b_2`` in R^K, pads -> -inf, ``A = softmax_j``;
  interest vectors ``z_k = sum_j A_kj x_j``  (:class:`MultiInterestExtractor`).
* Routing:
  - pretrain (ComiRec-style hard routing): ``k* = argmax_k z_k . E[i+]``  (:func:`select_target_interest`);
  - teacher for distillation: ``t_k = cos(z_k, E[i+])``, detached  (:func:`target_interest_logits`);
  - student mixture: ``u = sum_k softmax(l)_k z_k``  (:func:`mix_interests`);
  - distillation loss ``T^2 KL(softmax(t/T) || softmax(l/T))``, batch mean  (:func:`distillation_loss`).
* Pretrain full-sort scoring ``score(b, c) = max_k z_bk . E[c]``:
  :func:`max_interest_scores` scores the items in chunks of ``ceil(N/K)`` (one GEMM + ``amax`` over K per
  chunk; peak memory ~2 B x N), beside the naive
  :func:`max_interest_scores_naive` that materialises the B x K x N tensor (reference for tests/benchmarks).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_timeplug.layers.dropout import Dropout


def reverse_positions(item_seq_len, max_len):
    """``[B, L]`` reverse position ids: ``n - j`` for real slots ``j < n`` (most recent item -> 1), 0 for pads."""
    slots = torch.arange(max_len, device=item_seq_len.device)
    pos = item_seq_len.unsqueeze(1) - slots.unsqueeze(0)
    return pos.clamp(min=0)  # slots j >= n give n - j <= 0 -> 0 (the pad row of the position table)


class InterestTransformerLayer(nn.Module):
    """One post-LN Transformer layer as in ReChorus' ``TransformerLayer(n_heads=1, d_ff=d, kq_same=False)``.

    Single head with separate ``W_q, W_k, W_v`` (with bias) and *no* output projection; bidirectional
    attention with a key-padding mask only (the input is history only, so looking "ahead" leaks nothing);
    ``X1 = LN(X + drop(attn(X)))``, ``X2 = LN(X1 + drop(W_b relu(W_a X1)))`` with ``d_ff = d``; the official
    dropout is 0.
    """

    def __init__(self, d_model, layer_norm_eps=1e-5, dropout_prob=0.0):
        super().__init__()
        self.dropout = Dropout(dropout_prob)  # p = 0 (official) draws no random numbers
        self.q_linear = nn.Linear(d_model, d_model)
        self.k_linear = nn.Linear(d_model, d_model)
        self.v_linear = nn.Linear(d_model, d_model)
        self.layer_norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.linear1 = nn.Linear(d_model, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.layer_norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.scale = math.sqrt(d_model)

    def forward(self, x, valid):
        """``x``: [B, L, d]; ``valid``: [B, L] bool (real items)."""
        q, k, v = self.q_linear(x), self.k_linear(x), self.v_linear(x)
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.scale  # [B, L, L]
        scores = scores.masked_fill(~valid.unsqueeze(1), float("-inf"))
        # a row whose keys are all pads (only for an empty history) would be NaN: make it 0 as ReChorus does
        attn = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        x1 = self.layer_norm1(x + self.dropout(torch.matmul(attn, v)))
        return self.layer_norm2(x1 + self.dropout(self.linear2(torch.relu(self.linear1(x1)))))



class MultiInterestExtractor(nn.Module):
    """Self-attentive multi-interest extractor (docs/models.md §4.2): history -> ``K`` interests ``[B, K, d]``.

    Owns the item table ``E`` (``item_embedding``) that also scores candidates, so pretraining it alone
    gives a complete ComiRec-SA(+) recommender.
    """

    def __init__(self, n_items, embedding_size, attn_size, n_interests, max_seq_length, add_pos=True, add_trm=True,
                 dropout_prob=0.0):
        super().__init__()
        self.dropout = Dropout(dropout_prob)  # p = 0 (official) draws no random numbers
        self.n_interests = n_interests
        self.max_seq_length = max_seq_length
        self.add_pos = bool(add_pos)
        self.add_trm = bool(add_trm)
        # no padding_idx (as the official code): pad rows never reach a score, they are masked below
        self.item_embedding = nn.Embedding(n_items, embedding_size)
        if self.add_pos:
            self.position_embedding = nn.Embedding(max_seq_length + 1, embedding_size)  # row 0 = pads
        if self.add_trm:
            self.transformer = InterestTransformerLayer(embedding_size, dropout_prob=dropout_prob)
        self.W1 = nn.Linear(embedding_size, attn_size)
        self.W2 = nn.Linear(attn_size, n_interests)

    def encode(self, item_seq, item_seq_len):
        """The position-added, Transformer-encoded history ``x`` ([B, L, d], pad rows 0) and the valid mask."""
        valid = item_seq > 0
        x = self.item_embedding(item_seq)
        if self.add_pos:
            x = x + self.position_embedding(reverse_positions(item_seq_len, item_seq.size(1)))
        x = self.dropout(x)
        if self.add_trm:
            x = self.transformer(x, valid)
            x = x * valid.unsqueeze(-1).to(x.dtype)
        return x, valid

    def forward(self, item_seq, item_seq_len):
        x, valid = self.encode(item_seq, item_seq_len)
        scores = self.W2(torch.tanh(self.W1(x)))  # [B, L, K]
        scores = scores.masked_fill(~valid.unsqueeze(-1), float("-inf")).transpose(1, 2)  # [B, K, L]
        attn = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        # z_k aggregates the encoded vectors x_j, not the raw E[s_j] as ReChorus' ComiRec (docs/models.md §4.2)
        return torch.matmul(attn, x)  # [B, K, d]


class InterestPredictor(nn.Module):
    """Student's sequence encoder (docs/models.md §4.4): own item table ``F``, a 1-layer GRU; returns ``h_n``."""

    def __init__(self, n_items, embedding_size):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items, embedding_size)
        self.gru = nn.GRU(embedding_size, embedding_size, num_layers=1, batch_first=True)

    def forward(self, item_seq, item_seq_len):
        """``h`` after the last real item of each row (an empty history: after its first slot).

        The GRU is causal and RecBole pads on the right, so its output at slot n - 1 of the padded row is that state:
        the rows run unpacked, over the batch's longest history only, and the output is gathered at n - 1 (as
        RecBole's GRU4Rec does).  ``pack_padded_sequence`` would skip the padded steps, but torch's CPU GRU then
        slices the packed input once per step and each slice's backward writes a zero tensor of the whole input: an
        O(L^2) backward (B = 16, L = 500: 1.02 s against 0.18 s per forward and backward).  The gathered state is the
        packed one to float rounding (tested against each history run alone, values and gradients)."""
        last = (item_seq_len - 1).clamp(min=0)
        width = int(last.max()) + 1 if last.numel() else 1
        out, _ = self.gru(self.item_embedding(item_seq[:, :width]))  # [B, width, d]
        return out.gather(1, last.view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)


def build_projection(embedding_size, n_interests, n_layers, dropout=0.5):
    """ReChorus' ``proj``: ``(n_layers - 1) x [Linear d->d, Dropout 0.5, ReLU]`` then ``Linear d->K``."""
    if n_layers < 1:
        raise ValueError(f"`proj_layers` must be >= 1 (got {n_layers}): the last layer maps to the K interests.")
    layers = []
    for _ in range(n_layers - 1):
        layers += [nn.Linear(embedding_size, embedding_size), nn.Dropout(dropout), nn.ReLU()]
    layers.append(nn.Linear(embedding_size, n_interests))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------- routing
def select_target_interest(interests, target_emb):
    """Pretrain routing: the interest with the largest *dot product* with the target item, ``[B, d]``."""
    k_star = torch.einsum("bkd,bd->bk", interests, target_emb).argmax(dim=-1)
    return interests[torch.arange(interests.size(0), device=interests.device), k_star]


def target_interest_logits(interests, target_emb):
    """Teacher logits ``t_k = cos(z_k, E[i+])`` ``[B, K]``, detached: the teacher gets no gradient."""
    with torch.no_grad():
        return F.cosine_similarity(interests, target_emb.unsqueeze(1), dim=-1, eps=1e-12)


def mix_interests(interests, logits):
    """Student user vector ``u = sum_k softmax(l)_k z_k`` (temperature 1, as in the official code)."""
    return torch.einsum("bk,bkd->bd", torch.softmax(logits, dim=-1), interests)


def distillation_loss(student_logits, teacher_logits, temperature):
    """``T^2 * KL(softmax(t/T) || softmax(l/T))`` averaged over the batch (``KLDivLoss(reduction='batchmean')``)."""
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    teacher = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    return temperature * temperature * F.kl_div(log_student, teacher, reduction="batchmean")


# ------------------------------------------------------------------------------------------- scoring
def max_interest_scores(interests, item_emb, chunk_size=None):
    """``max_k z_bk . E[c]`` for all items, ``[B, N]``, without the ``[B, K, N]`` tensor.

    Items are scored in chunks: one ``[B*K, d] x [d, n]`` matmul per chunk (fast: a single GEMM), ``amax``
    over K, written into the ``[B, N]`` output.  ``chunk_size`` defaults to ``ceil(N / K)``, so the temporary
    ``[B, K, n]`` block is no larger than the output: peak memory ~2 B N instead of K B N.
    """
    B, K, d = interests.shape
    N = item_emb.size(0)
    chunk = chunk_size or max(1, -(-N // K))
    flat = interests.reshape(B * K, d)
    if torch.is_grad_enabled() and (interests.requires_grad or item_emb.requires_grad):
        # autograd cannot write into a preallocated tensor: same chunks, concatenated
        return torch.cat(
            [torch.matmul(flat, item_emb[i : i + chunk].t()).view(B, K, -1).amax(dim=1) for i in range(0, N, chunk)],
            dim=1,
        )
    out = torch.empty(B, N, dtype=torch.result_type(interests, item_emb), device=interests.device)
    for i in range(0, N, chunk):
        block = torch.matmul(flat, item_emb[i : i + chunk].t()).view(B, K, -1)
        torch.amax(block, dim=1, out=out[:, i : i + chunk])
    return out


def max_interest_scores_naive(interests, item_emb):
    """Reference for :func:`max_interest_scores`: the explicit ``[B, K, N]`` tensor, then ``amax`` over K."""
    return torch.einsum("bkd,nd->bkn", interests, item_emb).amax(dim=1)


def max_interest_item_scores(interests, cand_emb):
    """``max_k z_bk . c_b`` for one candidate per row (``predict``; sampled-negative evaluation)."""
    return torch.einsum("bkd,bd->bk", interests, cand_emb).amax(dim=-1)
