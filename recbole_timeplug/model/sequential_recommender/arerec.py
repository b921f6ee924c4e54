r"""ARERec as a leak-free next-item recommender.

Paper: U. Padungkiatwattana, T. Sae-Diae, S. Maneeroj, A. Takasu, "ARERec: Attentive Local Interaction Model
for Sequential Recommendation", IEEE Access 10:31340-31358, 2022 (doi 10.1109/ACCESS.2022.3160466); official
TensorFlow code github.com/umapornp/ARERec.  Longer account: ``docs/models.md`` §5.

Math (``docs/models.md`` §5.2; d = ``embedding_size``, r = ``region_size``, H = ``n_heads``).  For user u,
candidate item j and query time t*, the neighbours n_1..n_W of j are its users before t*
(``layers/neighbor_index.py``), each with a local-context-unit (LCU) id l_m and a mask w_m:

1. x_m = E_U[n_m];
2. attention personalised by the user, one vector per neighbour (no sum over m, as in the official code):
   a_{m,h} = softmax_m( (W_q E_U[u])_h . (W_k x_m)_h / sqrt(d/H) ),
   x~_m = W_o concat_h( a_{m,h} (W_v x_m)_h ) + b_o          (x~_m = x_m with ``use_attention: False``);
3. region embedding: neighbour profile p_m = K_IU[l_m] x~_m in R^r (item-user LCU, an r x d matrix),
   item profile q_m = K_UI[l_m] E_I[j] in R^r (user-item LCU), neighbour rating s_m = (p_m * q_m) w_m;
4. v = max_m s_m (masked: empty slots never win; no neighbour at all -> v = 0);
5. score(u, j) = w_o^T v + b_o (+ b_j with ``cold_item_bias``).

User side (``user_history``, default True; the paper applies region embeddings "to both user and item historical
sequences", the official code only to the item's).  Reconstructed, in the word-context form of region
embeddings (Qiao et al., ICLR 2018): each item h owns two more r x d units, K_H[h] and K_C[h].  Over the
user's own history h_1..h_L (``item_id_list``: strictly before the prediction, as for every sequential model)

6. history profile p'_m = K_H[h_m] E_I[h_m] in R^r, candidate profile q'_m = K_C[h_m] E_I[j] in R^r,
   history rating s'_m = p'_m * q'_m, v' = max_m s'_m over the real (not padded) positions;
7. score(u, j) += w_h^T v'   (w_h: a second Linear(r -> 1) without bias).

Training: BPR, -log sigma(score(u, j+) - score(u, j-)) with one uniform negative (``loss_type: BPR``, the
official pairwise form); every negative gets its own neighbours at the same t*.  ``loss_type: SSM`` is a
sampled softmax instead: -log softmax over {j+} and K = ``ssm_negatives`` uniform items shared by the batch
(a row's positive drawn among them is masked out).  Full-softmax CE is not offered: it would score every item
from its own neighbours for every training sample.  L2 slots ``reg_weights`` = [q, k, v, concat, fc] (Keras l2: lambda * sum w^2
of the kernels) and nine ``dropout_probs`` slots = [user emb, neighbour emb, item emb, K_UI, K_IU, neighbour
profile, item profile, neighbour rating, rating vector], placed as in the official code.

How this differs from the official code, and why (``docs/models.md`` §5.3-§5.5):

* Task: the official model is a rating classifier (softmax over rating classes, cross-entropy) evaluated by
  re-ranking each test user's rated items.  Here it is a next-item model: a Linear(r -> 1) scoring head, BPR
  with uniform negatives, RecBole's full ranking (or ``uni100``).
* Leakage: the official neighbour list N(j) is built from *all* data — future and test interactions, and
  the target user itself, whose presence reveals the answer.  Here N(j) comes from the training split only,
  strictly before t* (``time_ref: target`` = the prediction's time, or ``last_history``), without u.
* The official max-pool lets padding zeros win the max (``masked_max: False`` restores it); cold
  candidates (no neighbour before t*) would all tie at b_o, so ``cold_item_bias`` adds a learned per-item
  bias b_j to every score.  ``neighbor_window: recent`` (default; the last M users of j before t*) ranks
  better than the official ``earliest`` (j's first M training users) on ml-100k (README, issue 13).
* Split, model selection and metrics follow RecBole (temporal leave-one-out, selection on valid).
* ``user_history`` adds the user-side region embedding the paper describes and the official code lacks
  (steps 6-7).  Its form is ours: the LCUs belong to the history items (not to positions of one user's
  history, which a test-time position would never have trained), and the candidate meets each history
  item's unit directly — s'_m is linear in E_I[j], so full ranking is one matmul per row block.

Efficiency.  ``_score_reference`` is the literal per-neighbour computation above (gathers an r x d LCU pair
per slot).  ``_score_factored`` is the same math re-associated: with the ``earliest`` window an LCU id
always belongs to one (item, position) = one training interaction, so its user and item are fixed and
P[l, h] = K_IU[l] W_o^(h) (W_v E_U[user(l)] + b_v)_h, c[l] = K_IU[l] b_o, Q[l] = K_UI[l] E_I[item(l)]
are computed once per forward; per slot only H attention logits and r-vectors remain
(p_m = sum_h a_{m,h} P[l_m, h] + c[l_m]).  It is used whenever valid (``earliest`` window and no dropout on
slots 1-4, or at evaluation) and is tested against the reference.  ``full_sort_predict`` scores candidate
items in blocks of ``eval_item_chunk`` items x ``eval_user_chunk`` users so memory stays bounded
(O(users x items x W x r) per block); at evaluation with the ``earliest`` window a block's LCU ids and
neighbour users are the same for every row, and s_m = sum_h a_{m,h} (P * Q)[l_m, h] + (c * Q)[l_m] needs one
table gather per (item, slot) plus the per-row attention weights (``_full_sort_fast``; items are visited
by their number of LCUs, so a block is no wider than its widest item).  The user side of full ranking
computes each item's candidate profiles K_C[h] E_I^T once per call and pools gathered rows of that table
(``_history_full_sort``).  The ``recent``
window has no fixed user per LCU: training uses the literal path; full ranking precomputes, per block of
candidates, the neighbour rating of every (LCU, position in the item's history) pair without its attention weight,
so a (row, item, slot) only gathers H r-vectors and weights them (``_full_sort_recent``).

Optimizer.  The two LCU tables hold almost all parameters, and Adam over dense gradients updates every row
every step; ``adam_variant`` (``build_optimizer``, used by ``ARERecTrainer`` with ``learner: adam``) picks
``fused`` (default: the official algorithm, Adam over dense gradients, in torch's fused kernel), ``dense`` (the
same Adam, bitwise RecBole's) or ``lazy`` (sparse LCU gradients + SparseAdam: a different optimiser, much
faster at small batches).  Other learners get RecBole's optimizer.
"""

import math

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn
from torch.optim.optimizer import _get_scalar_dtype

from recbole_timeplug.layers.neighbor_index import WINDOWS, NeighborIndex
from recbole_timeplug.validation import ConfigChecks, is_number

DROPOUT_SLOTS = (
    "user_emb",
    "neighbor_emb",
    "item_emb",
    "lcu_user_item",
    "lcu_item_user",
    "neighbor_profile",
    "item_profile",
    "neighbor_rating",
    "rating_vector",
)
REG_SLOTS = ("q", "k", "v", "concat", "fc")
TIME_REFS = ("target", "last_history")
# the Adam that ARERecTrainer builds (ARERec.yaml `adam_variant`; ARERec.build_optimizer)
ADAM_VARIANTS = ("dense", "fused", "lazy")
# slots whose official dropout mask differs per (sample, neighbour) on d-dim inputs of the LCU products:
# with any of them active in training, the factored path cannot reproduce them -> reference path.
_PER_SLOT_DROPOUT = (1, 2, 3, 4)


class ARERec(SequentialRecommender):
    """ARERec (IEEE Access 2022) adapted to leak-free next-item recommendation (module docstring)."""

    needs_fields = ("TIME_FIELD",)
    # full ranking's user side: floats per block of the candidate-profile table T (``_history_full_sort``)
    history_table_floats = 1 << 24
    # full ranking with the `recent` window (``_full_sort_recent``): the most floats of its (LCU, position) table T
    # per item block, and the most rows per block (a block's gathered ratings are W H r x C rows floats: 256 rows
    # = the default eval_user_chunk, 0.77x the pass time of 64 rows on ml-100k, at most ~23 MB at W = 50, C = 32)
    recent_table_floats = 1 << 22
    recent_row_chunk = 256
    # its (row, user) indices are int32 below this many entries of a chunk's flattened logits, int64 from it on
    recent_int32_limit = 1 << 31

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check = ConfigChecks("ARERec", config)
        # BPR or a sampled softmax: a negative is scored from its own neighbours at the same query time, so
        # full-softmax CE would need every item's neighbour look-up for every sample
        self.loss_type = check.loss_type(("BPR", "SSM"))
        self.ssm_negatives = check.positive_int(
            "ssm_negatives", "uniform negatives per batch of loss_type SSM", default=20)
        self.embedding_size = check.positive_int("embedding_size")
        self.region_size = check.positive_int("region_size")
        self.n_heads = check.positive_int("n_heads")
        self.use_attention = check.boolean("use_attention")
        if self.use_attention:
            check.divides("embedding_size", "n_heads", self.embedding_size, self.n_heads)
        self.time_ref = check.one_of("time_ref", TIME_REFS)
        self.masked_max = check.boolean("masked_max")
        self.cold_item_bias = check.boolean("cold_item_bias")
        self.user_history = check.boolean("user_history", default=True)
        self.eval_item_chunk = check.positive_int("eval_item_chunk", none_ok=True)
        self.eval_user_chunk = check.positive_int("eval_user_chunk", none_ok=True)
        max_neighbors = check.positive_int("max_neighbors", none_ok=True)
        window = check.one_of("neighbor_window", WINDOWS)
        dropout_probs = check.list_of(
            "dropout_probs",
            len(DROPOUT_SLOTS),
            lambda p: is_number(p) and 0 <= p < 1,
            f"it must be {len(DROPOUT_SLOTS)} probabilities in [0, 1) for the slots {list(DROPOUT_SLOTS)} "
            f"(official with --use_dropout: [0,0,0,0.5,0.5,0,0,0,0])",
            default=[0.0] * len(DROPOUT_SLOTS),
        )
        reg_weights = check.list_of(
            "reg_weights",
            len(REG_SLOTS),
            lambda w: is_number(w) and w >= 0,
            f"it must be {len(REG_SLOTS)} non-negative L2 weights for {list(REG_SLOTS)} "
            f"(official with --use_regularizer: [0.001, 0.001, 0.001, 0.001, 0.001])",
            default=[0.0] * len(REG_SLOTS),
        )
        self.adam_variant = check.one_of(
            "adam_variant", ADAM_VARIANTS, "fused = Adam over dense gradients as the official code in one fused "
            "kernel, dense = the same, bitwise RecBole's Adam, lazy = sparse LCU gradients with SparseAdam",
            default="fused")
        if self.adam_variant == "lazy" and str(config["learner"]).lower() != "adam":
            raise check.error("adam_variant", self.adam_variant, f"it needs learner: adam (got {config['learner']!r})")
        if self.adam_variant == "lazy":
            for key in ("weight_decay", "clip_grad_norm"):  # SparseAdam has no weight decay; no norm of sparse grads
                if config[key]:
                    raise check.error("adam_variant", "lazy", f"it cannot be combined with {key} = {config[key]!r}")
        self.dropout_probs = [float(p) for p in dropout_probs]
        self.reg_weights = [float(w) for w in reg_weights]

        self.USER_ID = config["USER_ID_FIELD"]
        self.TIME = config["TIME_FIELD"]
        self.TIME_LIST = self.TIME + config["LIST_SUFFIX"]
        self.n_users = dataset.user_num
        # Built from the training split this constructor receives; non-persistent buffers only.
        self.neighbor_index = NeighborIndex.from_dataset(
            dataset, max_neighbors=max_neighbors, window=window, exclude_self=config["exclude_self"]
        )
        d, r = self.embedding_size, self.region_size

        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        # K_UI / K_IU: one r x d matrix per LCU id (row 0 = padding), stored flat for embedding lookups.
        # adam_variant lazy: sparse gradients (only the rows a batch touches), stepped by SparseAdam
        # fused (single process, no gradient clipping): sparse gradients that DenseGradAdam writes into persistent
        # dense buffers -- the same dense Adam, without a fresh table-sized gradient to page in and zero each step
        self.sparse_lcu_grad = self.adam_variant == "lazy" or (
            self.adam_variant == "fused" and str(config["learner"]).lower() == "adam"
            and not config["clip_grad_norm"] and config["single_spec"] is not False)
        sparse = self.sparse_lcu_grad
        self.lcu_user_item = nn.Embedding(self.neighbor_index.num_lcu, r * d, sparse=sparse)
        self.lcu_item_user = nn.Embedding(self.neighbor_index.num_lcu, r * d, sparse=sparse)
        if self.use_attention:
            self.w_q = nn.Linear(d, d)
            self.w_k = nn.Linear(d, d)
            self.w_v = nn.Linear(d, d)
            self.w_o = nn.Linear(d, d)
        self.fc = nn.Linear(r, 1)
        if self.cold_item_bias:
            self.item_bias = nn.Embedding(self.n_items, 1)
        if self.user_history:  # steps 6-7: K_H (history item's own profile) and K_C (the candidate's), per item
            self.lcu_history = nn.Embedding(self.n_items, r * d)
            self.lcu_history_candidate = nn.Embedding(self.n_items, r * d)
            self.fc_history = nn.Linear(r, 1, bias=False)
        self.dropouts = nn.ModuleList(nn.Dropout(p) for p in self.dropout_probs)
        self.loss_fct = BPRLoss()
        self._reset_parameters()

    # ------------------------------------------------------------------------------------ setup
    def _reset_parameters(self):
        # Keras defaults of the official code: Embedding U(-0.05, 0.05), LCUs N(0, 0.01^2),
        # Dense glorot-uniform kernels and zero biases.
        for emb in (self.user_embedding, self.item_embedding):
            nn.init.uniform_(emb.weight, -0.05, 0.05)
        lcus = [self.lcu_user_item, self.lcu_item_user]
        layers = [self.fc] + ([self.w_q, self.w_k, self.w_v, self.w_o] if self.use_attention else [])
        if self.user_history:
            lcus += [self.lcu_history, self.lcu_history_candidate]
            layers.append(self.fc_history)
        for lcu in lcus:
            nn.init.normal_(lcu.weight, 0.0, 0.01)
        for layer in layers:
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        if self.cold_item_bias:
            nn.init.zeros_(self.item_bias.weight)

    # ------------------------------------------------------------------------------------ pieces
    def query_time(self, interaction):
        """t*: the prediction's time (``target``) or the last history item's time (``last_history``)."""
        if self.time_ref == "target":
            return interaction[self.TIME]
        last = (interaction[self.ITEM_SEQ_LEN] - 1).clamp(min=0).unsqueeze(-1)
        return interaction[self.TIME_LIST].gather(1, last).squeeze(-1)

    def _factored_ok(self):
        if self.neighbor_index.window != "earliest":
            return False  # `recent` slots hold different users over time: no fixed user per LCU id
        return not (self.training and any(self.dropout_probs[i] > 0 for i in _PER_SLOT_DROPOUT))

    def _attention_logits(self, user_query, nbr):
        """Scaled q.k logits [B, C, W, H] of every neighbour slot (pads not yet masked).

        Either a [B, |U|, H] table of the query against all users, then gathered (cheap when C*W >> |U|),
        or the keys of the gathered neighbours (cheap for a few candidates, e.g. training).
        """
        B, C, W = nbr.shape
        H = self.n_heads
        dh = self.embedding_size // H
        q = self.w_q(user_query).view(B, H, dh)
        if self.n_users <= C * W:
            keys_all = self.w_k(self.user_embedding.weight).view(self.n_users, H, dh)
            table = torch.einsum("bhk,uhk->buh", q, keys_all) / math.sqrt(dh)  # [B, U, H]
            rows = torch.arange(B, device=nbr.device).view(B, 1, 1)
            return table[rows, nbr]
        k = self.w_k(self.user_embedding(nbr)).view(B, C, W, H, dh)
        return torch.einsum("bhk,bcwhk->bcwh", q, k) / math.sqrt(dh)

    @staticmethod
    def _attention_weights(logits, valid):
        # softmax over the neighbours of one (user, candidate); empty slots get weight 0 (official: -1e9).
        return torch.softmax(logits.masked_fill(~valid.unsqueeze(-1), -1e9), dim=2)

    def _head(self, p, q, valid, items):
        """Steps 3-5 from the neighbour profiles p and item profiles q [B, C, W, r] -> scores [B, C]."""
        drop = self.dropouts
        return self._pool_and_score(drop[7](drop[5](p) * drop[6](q)), valid, items)

    def _pool_and_score(self, s, valid, items):
        """Masked max-pool of the neighbour ratings s [B, C, W, r] (step 4), then the head (step 5)."""
        s = s * valid.unsqueeze(-1).to(s.dtype)
        if self.masked_max:
            v = s.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=2)
            v = torch.where(valid.any(dim=2, keepdim=True), v, torch.zeros_like(v))
        else:  # official: padded slots take part in the max with exact zeros
            v = s.amax(dim=2)
        return self._score_head(v, items)

    def _score_head(self, v, items):
        """Step 5: rating vectors v [B, C, r] of the candidates ``items`` [B, C] (or [1, C]) -> scores [B, C]."""
        score = self.fc(self.dropouts[8](v)).squeeze(-1)
        if self.cold_item_bias:
            score = score + self.item_bias(items).squeeze(-1)
        return score

    def _lcu_tables(self, ids):
        """Per-LCU products of the factored path for the LCU ids ``ids`` [S'] (all when ``None``; ``earliest`` window).

        Returns P [S', H, r] (or [S', r] without attention), c [S', r] or None, Q [S', r].
        """
        d, r, H = self.embedding_size, self.region_size, self.n_heads
        index = self.neighbor_index
        if ids is None:  # all LCUs, as views of the tables
            k_iu = self.lcu_item_user.weight.view(-1, r, d)
            k_ui = self.lcu_user_item.weight.view(-1, r, d)
            lcu_user, lcu_item = index.lcu_user, index.lcu_item
        else:
            k_iu = self.lcu_item_user(ids).view(-1, r, d)
            k_ui = self.lcu_user_item(ids).view(-1, r, d)
            lcu_user, lcu_item = index.lcu_user[ids], index.lcu_item[ids]
        x = self.user_embedding(lcu_user)
        if self.use_attention:
            dh = d // H
            v = self.w_v(x).view(-1, H, dh)
            z = torch.einsum("ohk,shk->sho", self.w_o.weight.view(d, H, dh), v)  # W_o^(h) v_h, [S', H, d]
            P = torch.einsum("srd,shd->shr", k_iu, z)
            c = torch.einsum("srd,d->sr", k_iu, self.w_o.bias)
        else:
            P = torch.einsum("srd,sd->sr", k_iu, x)
            c = None
        Q = torch.einsum("srd,sd->sr", k_ui, self.item_embedding(lcu_item))
        return P, c, Q

    def _score_factored(self, user, items, query_time):
        """Scores [B, C] via per-LCU tables (see module docstring); equal to ``_score_reference``."""
        nbr, lcu, _ = self.neighbor_index.lookup(user, items, query_time)
        valid = lcu > 0
        if lcu.numel() < self.neighbor_index.num_lcu or (self.adam_variant == "lazy" and torch.is_grad_enabled()):
            # few slots (sampled evaluation, big tables), or sparse LCU gradients: only the LCUs this batch touches
            ids, local = torch.unique(lcu, return_inverse=True)
            P, c, Q = self._lcu_tables(ids)
        else:  # the batch touches about every LCU: whole tables, no gather/scatter of r x d matrices
            (P, c, Q), local = self._lcu_tables(None), lcu
        if self.use_attention:
            user_query = self.dropouts[0](self.user_embedding(user))
            a = self._attention_weights(self._attention_logits(user_query, nbr), valid)
            p = torch.einsum("bcwh,bcwhr->bcwr", a, P[local]) + c[local]
        else:
            p = P[local]
        return self._head(p, Q[local], valid, items)

    def _score_reference(self, user, items, query_time):
        """Scores [B, C], literally as the official model: gather an r x d LCU pair per neighbour slot."""
        B, C = items.shape
        d, r, H = self.embedding_size, self.region_size, self.n_heads
        drop = self.dropouts
        nbr, lcu, _ = self.neighbor_index.lookup(user, items, query_time)
        valid = lcu > 0
        W = nbr.shape[-1]
        x = self.user_embedding(nbr)  # [B, C, W, d]
        if self.use_attention:
            dh = d // H
            user_query = drop[0](self.user_embedding(user))
            q = self.w_q(user_query).view(B, 1, 1, H, dh)
            k = self.w_k(x).view(B, C, W, H, dh)
            v = self.w_v(x).view(B, C, W, H, dh)
            a = self._attention_weights((q * k).sum(-1) / math.sqrt(dh), valid)
            x = self.w_o((a.unsqueeze(-1) * v).reshape(B, C, W, d))  # no sum over neighbours (official)
        x = drop[1](x)
        e = drop[2](self.item_embedding(items))  # [B, C, d]
        k_ui = drop[3](self.lcu_user_item(lcu).view(B, C, W, r, d))
        k_iu = drop[4](self.lcu_item_user(lcu).view(B, C, W, r, d))
        p = torch.einsum("bcwrd,bcwd->bcwr", k_iu, x)
        q = torch.einsum("bcwrd,bcd->bcwr", k_ui, e)
        return self._head(p, q, valid, items)

    # ------------------------------------------------------------------------------------ API
    def build_optimizer(self, learning_rate, weight_decay=0.0):
        """The Adam of ``adam_variant`` (built by ``ARERecTrainer`` when ``learner`` is adam).

        * ``dense``: Adam over dense gradients, as RecBole builds it (``BufferedAdam``: bitwise the same updates
          as torch's default single-tensor Adam, without allocating two table-sized temporaries per step);
        * ``fused``: the fused Adam kernel: the same algorithm, rounding may differ in the last bit
          (``DenseGradAdam``: the LCU tables' sparse gradients go through persistent dense buffers);
        * ``lazy``: the LCU tables (almost all parameters) get sparse gradients and ``torch.optim.SparseAdam``
          (rows a batch does not touch keep their moments and do not move: *not* the official Keras Adam, whose
          moments decay and whose rows keep moving every step); every other parameter dense Adam.
        """
        if self.adam_variant == "lazy":
            sparse = [self.lcu_user_item.weight, self.lcu_item_user.weight]
            dense = [p for p in self.parameters() if all(p is not q for q in sparse)]
            return OptimizerPair(
                torch.optim.Adam(dense, lr=learning_rate, weight_decay=weight_decay, foreach=True),
                torch.optim.SparseAdam(sparse, lr=learning_rate),
            )
        if self.adam_variant == "fused":
            return DenseGradAdam(self.parameters(), lr=learning_rate, weight_decay=weight_decay, fused=True)
        return BufferedAdam(self.parameters(), lr=learning_rate, weight_decay=weight_decay)

    def forward(self, user, items, query_time, item_seq=None, item_seq_len=None):
        """Scores [B, C] of candidate ``items`` [B, C] for ``user`` [B] at ``query_time`` [B]; with
        ``user_history`` also the user's history ``item_seq`` [B, L] of lengths ``item_seq_len`` [B]."""
        scores = self._item_side(user, items, query_time)
        if self.user_history:
            G, valid = self._history_units(item_seq, item_seq_len)
            s = torch.einsum("blrd,bcd->bclr", G, self.item_embedding(items))
            scores = scores + self._history_head(s.masked_fill(~valid[:, None, :, None], float("-inf")), valid, 2)
        return scores

    def _item_side(self, user, items, query_time):
        """Steps 1-5 (the item's history): scores [B, C]."""
        if self._factored_ok():
            return self._score_factored(user, items, query_time)
        return self._score_reference(user, items, query_time)

    # ------------------------------------------------------------------------------------ user side
    def _history_units(self, item_seq, item_seq_len):
        """Step 6 up to the candidate: G [B, L, r, d] with G_m = diag(p'_m) K_C[h_m], so s'_m = G_m E_I[j];
        and the mask [B, L] of real history positions."""
        B, L = item_seq.shape
        d, r = self.embedding_size, self.region_size
        p = torch.einsum("blrd,bld->blr", self.lcu_history(item_seq).view(B, L, r, d), self.item_embedding(item_seq))
        G = p.unsqueeze(-1) * self.lcu_history_candidate(item_seq).view(B, L, r, d)
        valid = torch.arange(L, device=item_seq.device) < item_seq_len.unsqueeze(-1)
        return G, valid

    def _history_head(self, s, valid, dim):
        """Steps 6-7 from the history ratings ``s`` (padded positions already -inf) pooled over ``dim`` -> w_h^T v'.
        ``s`` is [B, C, L, r] (dim 2) or [B, L, r, C] (dim 1); a history without items (never made by RecBole)
        pools to v' = 0."""
        v = s.amax(dim=dim)
        empty = ~valid.any(dim=1)
        if empty.any():
            v = v.masked_fill(empty.view(-1, *([1] * (v.dim() - 1))), 0.0)
        if dim == 2:  # [B, C, r]
            return self.fc_history(v).squeeze(-1)
        return torch.einsum("brc,r->bc", v, self.fc_history.weight[0])  # [B, r, C]

    def _history_full_sort(self, item_seq, item_seq_len, scores, row_step):
        """Adds steps 6-7 for every item to ``scores`` [B, n_items].

        s'_m(j) = p'_m * (K_C[h_m] E_I[j]) needs the candidate profile T[h, :, j] = K_C[h] E_I[j] of each history
        item h, and the same h recurs in many histories: T is computed once for all items (one
        [n_items*r, d] x [d, items] matmul per block of candidates, at most ``history_table_floats``), and each history
        position then costs one gather of T[h_m], a multiply by p'_m and a running max (``_history_full_sort_direct``
        multiplies per row instead: ~25x the FLOPs at L = 50 on ml-100k).  Padded positions repeat position 0
        (a repeated value does not change a max).  Under autograd the direct form is used."""
        if torch.is_grad_enabled():
            return self._history_full_sort_direct(item_seq, item_seq_len, scores, row_step)
        B, N = scores.shape
        r, d = self.region_size, self.embedding_size
        k_c = self.lcu_history_candidate.weight.view(-1, d)  # [n_items*r, d]
        items = self.item_embedding.weight
        w = self.fc_history.weight[0]
        col_step = max(1, self.history_table_floats // (N * r))
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        for c0 in range(0, N, col_step):
            cols = slice(c0, min(c0 + col_step, N))
            T = torch.matmul(k_c, items[cols].t()).view(N, r, -1)  # [n_items, r, C]
            C = T.shape[-1]
            sub = max(1, (1 << 18) // (r * C))  # rows whose running max [b, r, C] stays in cache (~1 MB)
            for r0 in range(0, B, sub):
                rows = slice(r0, min(r0 + sub, B))
                seq, lens = item_seq[rows], item_seq_len[rows]
                length = int(lens.max())
                if length == 0:
                    continue
                seq = seq[:, :length]
                valid = positions[:length] < lens.unsqueeze(-1)
                seq = torch.where(valid, seq, seq[:, :1])
                b = seq.shape[0]
                p = torch.einsum("blrd,bld->blr", self.lcu_history(seq).view(b, length, r, d), self.item_embedding(seq))
                acc = torch.index_select(T, 0, seq[:, 0]).mul_(p[:, 0].unsqueeze(-1))
                buf = torch.empty_like(acc)
                for m in range(1, length):
                    torch.index_select(T, 0, seq[:, m], out=buf).mul_(p[:, m].unsqueeze(-1))
                    torch.maximum(acc, buf, out=acc)
                term = torch.einsum("brc,r->bc", acc, w)
                scores[rows, cols] += term.masked_fill_((lens == 0).unsqueeze(-1), 0.0)

    def _history_full_sort_direct(self, item_seq, item_seq_len, scores, row_step):
        """``_history_full_sort`` as one [L*r, d] x [d, items] matmul per block of rows and items (blocks of at
        most 2^22 ratings, ~16 MB): the literal s'_m = G_m E_I[j], kept for autograd and as the reference."""
        B, N = scores.shape
        L, r = item_seq.shape[1], self.region_size
        items = self.item_embedding.weight  # [N, d]
        for r0 in range(0, B, row_step):
            rows = slice(r0, min(r0 + row_step, B))
            G, valid = self._history_units(item_seq[rows], item_seq_len[rows])
            b = G.shape[0]
            G = G.reshape(b, L * r, -1)
            pad = (~valid).view(b, L, 1, 1)
            step = max(1, (1 << 22) // (b * L * r))
            for c0 in range(0, N, step):
                cols = slice(c0, min(c0 + step, N))
                s = torch.matmul(G, items[cols].t()).view(b, L, r, -1).masked_fill_(pad, float("-inf"))
                scores[rows, cols] += self._history_head(s, valid, 1)

    def reg_loss(self):
        layers = [self.w_q, self.w_k, self.w_v, self.w_o] if self.use_attention else [None] * 4
        total = 0.0
        for weight, layer in zip(self.reg_weights, layers + [self.fc]):
            if weight > 0 and layer is not None:
                total = total + weight * layer.weight.pow(2).sum()
        return total

    def calculate_loss(self, interaction):
        user = interaction[self.USER_ID]
        pos = interaction[self.ITEM_ID]
        if self.loss_type == "BPR":
            candidates = torch.stack([pos, interaction[self.NEG_ITEM_ID]], dim=1)
            scores = self.forward(user, candidates, self.query_time(interaction), *self._history(interaction))
            return self.loss_fct(scores[:, 0], scores[:, 1]) + self.reg_loss()
        # SSM: softmax over the positive (column 0) and K negatives shared by the batch
        neg = self._sample_negatives(self.ssm_negatives, pos.device)
        candidates = torch.cat([pos.unsqueeze(1), neg.unsqueeze(0).expand(len(pos), -1)], dim=1)
        scores = self.forward(user, candidates, self.query_time(interaction), *self._history(interaction))
        hit = torch.cat([torch.zeros_like(pos, dtype=torch.bool).unsqueeze(1), neg.unsqueeze(0) == pos.unsqueeze(1)], 1)
        scores = scores.masked_fill(hit, float("-inf"))  # a row's own positive is not its negative
        return nn.functional.cross_entropy(scores, torch.zeros_like(pos)) + self.reg_loss()

    def _sample_negatives(self, k, device):
        """K item ids, uniform over the real items 1..n_items-1 (0 is padding), from torch's global generator
        (saved in checkpoints, so resuming stays exact)."""
        return torch.randint(1, self.n_items, (k,), device=device)

    def predict(self, interaction):
        user = interaction[self.USER_ID]
        items = interaction[self.ITEM_ID].unsqueeze(1)
        return self.forward(user, items, self.query_time(interaction), *self._history(interaction)).squeeze(1)

    def _history(self, interaction):
        if not self.user_history:
            return None, None
        return interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]

    def full_sort_predict(self, interaction):
        """Scores [B, n_items], computed in blocks of at most ``eval_user_chunk`` x ``eval_item_chunk``."""
        user = interaction[self.USER_ID]
        query_time = self.query_time(interaction)
        B, N = user.shape[0], self.n_items
        row_step = self.eval_user_chunk or B
        item_step = self.eval_item_chunk or N
        scores = torch.empty(B, N, device=user.device)
        # Evaluation with the `earliest` window: per-LCU tables once per call, candidate blocks shared by
        # all rows (_full_sort_fast).  Otherwise (recent window, or called in training mode) the general path.
        if self._factored_ok() and not self.training:
            self._full_sort_fast(user, query_time, scores, row_step, item_step)
        elif self.neighbor_index.window == "recent" and not self.training:
            self._full_sort_recent(user, query_time, scores, row_step, item_step)
        else:
            all_items = torch.arange(N, device=user.device)
            for r0 in range(0, B, row_step):
                rows = slice(r0, min(r0 + row_step, B))
                u, t = user[rows], query_time[rows]
                for c0 in range(0, N, item_step):
                    cols = slice(c0, min(c0 + item_step, N))
                    items = all_items[cols].unsqueeze(0).expand(u.shape[0], -1)
                    scores[rows, cols] = self._item_side(u, items, t)
        if self.user_history:
            self._history_full_sort(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], scores, row_step)
        return scores

    def _rating_tables(self):
        """Evaluation-only per-LCU neighbour ratings: with no dropout, s_m = p_m * q_m =
        sum_h a_{m,h} (P[l,h] * Q[l]) + c[l] * Q[l]; returns R [S, H, r] (or [S, r]) and R0 [S, r] or None."""
        P, c, Q = self._lcu_tables(None)
        if self.use_attention:
            return P * Q.unsqueeze(1), c * Q
        return P * Q, None

    def _row_chunks(self, user, query_time, row_step):
        """The chunks of at most ``row_step`` rows both full-ranking paths visit: ``[(rows, u, t, table)]``, with
        ``table`` [H, U, b] the scaled query-key logits of the chunk's users against every user (``None`` without
        attention), computed once per call."""
        chunks = []
        if self.use_attention:
            H = self.n_heads
            dh = self.embedding_size // H
            keys_all = self.w_k(self.user_embedding.weight).view(self.n_users, H, dh)
        for r0 in range(0, user.shape[0], row_step):
            rows = slice(r0, min(r0 + row_step, user.shape[0]))
            u, t = user[rows], query_time[rows]
            table = None
            if self.use_attention:
                q = self.w_q(self.user_embedding(u)).view(-1, H, dh)
                table = (torch.einsum("bhk,uhk->hub", q, keys_all) / math.sqrt(dh)).contiguous()  # [H, U, b]
            chunks.append((rows, u, t, table))
        return chunks

    def _item_blocks(self, n_items, item_step, floats_per_slot_and_edge=0, max_floats=0):
        """The candidate blocks both full-ranking paths visit: ``(items, slot, lcu, P)``.

        Items are sorted by their training history length n_j (so also by their number of LCUs min(n_j, M)), so a
        block of ``item_step`` items is only as wide (W = its last item's min(n_j, M); slots p >= min(n_j, M) never
        hold a neighbour) and as long (P = its last item's n_j) as its last item.  With ``floats_per_slot_and_edge``
        a block is also cut to at most ``max_floats`` floats of a per-(slot, edge) table (``_full_sort_recent``).
        ``slot`` [W] = 0..W-1, ``lcu`` [C, W] = the block's LCU ids 1 + lcu_ptr[j] + p (0 where p >= min(n_j, M))."""
        index = self.neighbor_index
        n_edges = index.item_ptr[1:] - index.item_ptr[:-1]  # n_j
        n_lcu = index.lcu_ptr[1:] - index.lcu_ptr[:-1]  # min(n_j, M)
        order = torch.argsort(n_edges, stable=True)
        lengths, widths = n_edges[order].tolist(), n_lcu[order].tolist()
        slot_all = torch.arange(index.width, device=order.device)
        c0 = 0
        while c0 < n_items:
            c1 = min(c0 + item_step, n_items)
            W, P = max(widths[c1 - 1], 1), max(lengths[c1 - 1], 1)  # the block's last item is its widest/longest
            if floats_per_slot_and_edge:
                c1 = min(c1, c0 + max(1, max_floats // (floats_per_slot_and_edge * W * P)))
            items = order[c0:c1]
            c0 = c1
            slot = slot_all[:W]
            exists = slot < n_lcu[items].unsqueeze(-1)  # p < min(n_j, M)
            lcu = torch.where(exists, 1 + index.lcu_ptr[items].unsqueeze(-1) + slot, 0)  # [C, W]
            yield items, slot, lcu, P

    def _full_sort_fast(self, user, query_time, scores, row_step, item_step):
        """Fills ``scores`` [B, n_items] (earliest window, eval mode); equal to ``forward`` on every item.

        Same neighbours as ``NeighborIndex.lookup``: the slot p of item j is LCU 1 + lcu_ptr[j] + p, whose
        user is fixed, so an item block's [C, W] LCU/user ids are shared by all rows; only the time filter
        p < c(j, t*), the self-exclusion and the attention weights depend on the row.  Work is cut by:

        * the per-LCU tables (``_rating_tables``), the keys of all users and, per row chunk, the query-user
          logit table [H, U, B] are computed once per call (``_row_chunks``), a block's gathered tables once
          for all rows;
        * items are visited sorted by their number of LCUs (``_item_blocks``), so a block is only as wide
          as its widest item (with ``masked_max: False`` a padding slot cut off takes part in the max with 0,
          which a clamp at 0 restores);
        * the neighbour ratings are laid out [W, r, C, B] (slot first, row last): the max-pool over slots is then
          an elementwise maximum of contiguous planes, the attention logits are gathered as contiguous rows of
          a [H, U, B] table, and the ratings are built with in-place multiply-adds, one pass per head.
        """
        index = self.neighbor_index
        R, R0 = self._rating_tables()
        attention = self.use_attention
        H = self.n_heads
        if attention:
            RT = R.permute(1, 2, 0).contiguous()  # [H, r, S]
            R0T = R0.t().contiguous()  # [r, S]
        else:
            RT = R.t().contiguous()  # [r, S]
        r = self.region_size
        chunks = self._row_chunks(user, query_time, row_step)
        for items, slot, lcu, _ in self._item_blocks(scores.shape[1], item_step):
            lcu = lcu.t()  # [W, C]
            W, C = lcu.shape
            nbr = index.lcu_user[lcu]  # [W, C]
            # neighbour ratings without the attention, shared by all rows: base [W, r, C, 1], R_blk [H, W, r, C, 1]
            base = (R0T if attention else RT)[:, lcu].permute(1, 0, 2).unsqueeze(-1)
            R_blk = RT[:, :, lcu].permute(0, 2, 1, 3).unsqueeze(-1) if attention else None
            for rows, u, t, table in chunks:
                b = u.shape[0]
                count = index.count_before(items.unsqueeze(0).expand(b, -1), t).t()  # [C, b]
                valid = slot.view(W, 1, 1) < count  # [W, C, b]: p < c(j, t*) (c <= n_j, p < W <= M imply exists)
                if index.exclude_self:
                    valid = valid & (nbr.unsqueeze(-1) != u.view(1, 1, b))
                invalid = ~valid
                # neighbour ratings s [W, r, C, b]; masked_max: empty slots start at -inf (a finite rating added
                # to -inf stays -inf), official max: they are set to exact zeros once s is complete
                s = torch.empty(W, r, C, b, device=base.device)
                if self.masked_max:
                    neg = torch.zeros(W, 1, C, b, device=base.device).masked_fill_(invalid.unsqueeze(1), float("-inf"))
                    torch.add(base, neg, out=s)
                else:
                    s.copy_(base.expand(W, r, C, b))
                if attention:
                    logits = torch.index_select(table, 1, nbr.flatten()).view(H, W, C, b)
                    a = torch.softmax(logits.masked_fill_(invalid, -1e9), dim=1)
                    for h in range(H):  # H is small: in-place multiply-adds beat a batched matmul of H x r blocks
                        s.addcmul_(a[h].unsqueeze(1), R_blk[h])
                v = self._max_pool_slots(s, invalid, pad=W < index.width)  # [r, C, b]
                scores[rows, items] = self._score_head(v.permute(2, 1, 0), items.unsqueeze(0))

    def _full_sort_recent(self, user, query_time, scores, row_step, item_step):
        """Fills ``scores`` [B, n_items] (``recent`` window, eval mode); equal to ``forward`` on every item.

        With the ``recent`` window slot m of item j is still LCU l = 1 + lcu_ptr[j] + m for every row, but its
        user is the edge at position p = c - 1 - m of j's time-ordered training history, c = c(j, t*): it changes
        with the row, so the per-LCU products of ``_full_sort_fast`` do not exist.  What does exist is a product
        per (LCU, position): with y_h(e) = W_o^(h) v_h(user of edge e) and Q[l] = K_UI[l] E_I[j],

            s_m = sum_h a_{m,h} T_h[l, p] + c[l] * Q[l],     T_h[l, p] = diag(Q[l]) K_IU[l] y_h(item_ptr[j] + p),

        and T holds every pair (slot m < min(n_j, M), position p < n_j) of an item: one [W r, d] x [d, P] product
        per item and head (``sum_j min(n_j, M) n_j H r d`` multiply-adds per call, independent of the rows).  Each
        (row, item, slot) then gathers H r-vectors and weights them by its attention (as ``_full_sort_fast`` does
        with its per-LCU tables), instead of building a d-dim attended vector and an r x d product per triple.
        Items are visited sorted by n_j, so a block is only as wide (W) and as long (P) as its last item; blocks
        are cut to at most ``recent_table_floats`` floats of T, T is computed once per block for all rows, and rows
        go in chunks of at most ``recent_row_chunk`` (both bound the memory of a block).

        Empty slots (p < 0) and the querying user's own slot (``exclude_self``) are found without a per-triple
        test: T's companion E holds the slot's user, or a sentinel user U for p < 0, and the chunk's [H, b, U + 1]
        logit table holds -inf at the sentinel and at each row's own user.  One gather of E and one of that table
        give the attention logits with the holes at -inf (clamped to the -1e9 of ``_attention_weights`` for the
        softmax); the holes are then added as a 0 / -inf term to the ratings, which costs a tenth of a masked fill
        over [W, r, C, b] on CPU."""
        index = self.neighbor_index
        d, r = self.embedding_size, self.region_size
        k_iu = self.lcu_item_user.weight.view(-1, r, d)
        Q = torch.einsum("srd,sd->sr", self.lcu_user_item.weight.view(-1, r, d), self.item_embedding(index.lcu_item))
        attention = self.use_attention
        if attention:
            H = self.n_heads
            dh = d // H
            v_all = self.w_v(self.user_embedding.weight).view(self.n_users, H, dh)
            y = torch.einsum("ohk,uhk->huo", self.w_o.weight.view(d, H, dh), v_all).contiguous()  # [H, U, d]
            R0 = torch.einsum("srd,d->sr", k_iu, self.w_o.bias) * Q  # c[l] * Q[l], [S, r]
        else:
            y = self.user_embedding.weight.unsqueeze(0)  # [1, U, d]: the neighbour's embedding itself
        n_heads = y.shape[0]
        hole = self.n_users  # E's sentinel user: an empty slot
        row_chunk = min(row_step, self.recent_row_chunk)
        # indices into a chunk's flattened [b (U + 1)] logits: int32 halves their traffic where it cannot overflow
        index_dtype = torch.int32 if row_chunk * (hole + 1) < self.recent_int32_limit else torch.int64
        chunks = []
        for rows, u, t, table in self._row_chunks(user, query_time, row_chunk):
            b = u.shape[0]
            # [H, b, U + 1] logits of row i against every user (without attention: zeros), -inf at the holes
            lg = table.transpose(1, 2) if attention else y.new_zeros(1, b, self.n_users)
            lg = torch.cat([lg, lg.new_full((lg.shape[0], b, 1), float("-inf"))], dim=2)
            if index.exclude_self:
                lg[:, torch.arange(b, device=u.device), u] = float("-inf")
            offset = torch.arange(0, b * (hole + 1), hole + 1, device=u.device, dtype=index_dtype)  # row i's start
            chunks.append((rows, u, t, lg.view(lg.shape[0], -1), offset))
        for items, slot, lcu, P in self._item_blocks(scores.shape[1], item_step, n_heads * r, self.recent_table_floats):
            C, W = lcu.shape
            start = index.item_ptr[items]  # [C]
            edge = (start.unsqueeze(-1) + torch.arange(P, device=user.device)).clamp(max=max(index.num_edges - 1, 0))
            K = k_iu[lcu] * Q[lcu].unsqueeze(-1)  # diag(Q[l]) K_IU[l], [C, W, r, d]
            edge_user = index.nbr_user[edge] if index.num_edges else torch.zeros_like(edge)  # [C, P]; past n_j: unused
            U = torch.einsum("cwkd,hcpd->whkcp", K, y[:, edge_user])  # [W, H, r, C, P]: T by (slot, position p)
            # re-indexed by c = c(j, t*) in 0..P instead of p = c - 1 - m: slot m's plane shifted right by m + 1,
            # T[m, ..., j, c] = U[m, ..., j, c - 1 - m], and E[m, j, c] its user (the sentinel where c <= m: an empty
            # slot).  Rows x columns = (slot, head, k) x (item, c), so a chunk's gather of one column per (item, row)
            # is already laid out [W, H, r, C, b], like _full_sort_fast's ratings (no transpose per chunk)
            T = U.new_zeros(W, n_heads, r, C, P + 1)
            E = edge_user.new_full((W, C, P + 1), hole, dtype=index_dtype)
            for m in range(min(W, P)):
                T[m, ..., m + 1:] = U[m, ..., : P - m]
                E[m, :, m + 1:] = edge_user[:, : P - m]
            T, E, U = T.view(W * n_heads * r, C * (P + 1)), E.view(W, C * (P + 1)), None  # (U freed: one table)
            bias = R0[lcu].permute(1, 2, 0).unsqueeze(-1) if attention else None  # [W, r, C, 1]
            for rows, u, t, lg, offset in chunks:
                b = u.shape[0]
                count = index.count_before(items.unsqueeze(0).expand(b, -1), t).t()  # [C, b]
                at = (torch.arange(C, device=u.device).view(C, 1) * (P + 1) + count).reshape(-1)  # column of (item, row)
                # one column of T per (item, row): G [W, H, r, C, b], laid out like _full_sort_fast's ratings, so the
                # max-pool over slots is an elementwise maximum of contiguous planes
                G = T.index_select(1, at).view(W, n_heads, r, C, b)
                flat = E.index_select(1, at).view(W, C, b).add_(offset)  # (row, slot user) in lg
                logits = lg.index_select(1, flat.view(-1)).view(-1, W, C, b)  # [H, W, C, b], -inf at the holes
                hole_term = logits[0].mul(0.0).nan_to_num_(nan=float("-inf"))  # 0, or -inf at a hole (-inf * 0)
                if attention:
                    a = torch.softmax(logits.clamp_(min=-1e9), dim=1).unsqueeze(2)  # [H, W, 1, C, b]
                    s = torch.addcmul(bias, G[:, 0], a[0])  # c[l] Q[l] + sum_h a_h T_h, [W, r, C, b]
                    for h in range(1, H):
                        s.addcmul_(G[:, h], a[h])
                else:
                    s = G[:, 0]  # [W, r, C, b]
                if self.masked_max:
                    v = self._max_pool_slots(s.add_(hole_term.unsqueeze(1)), None, pad=W < index.width)
                else:
                    v = self._max_pool_slots(s, torch.isneginf(hole_term), pad=W < index.width)
                scores[rows, items] = self._score_head(v.permute(2, 1, 0), items.unsqueeze(0))

    def _max_pool_slots(self, s, invalid, pad):
        """Step 4 over the first (slot) axis of s [W, r, C, B] -> [r, C, B]; with ``masked_max`` the empty slots
        ``invalid`` [W, C, B] already hold -inf, otherwise they are zeroed here (in place).

        ``pad``: the block was cut narrower than the index's width, so every item had padding slots there."""
        if self.masked_max:
            v = s.amax(dim=0)  # -inf exactly where every slot is empty (ratings are finite)
            return v.masked_fill_(v == float("-inf"), 0.0)
        v = s.masked_fill_(invalid.unsqueeze(1), 0.0).amax(dim=0)  # official: padded slots take part with exact zeros
        return v.clamp_min(0.0) if pad else v


class OptimizerPair:
    """Two optimizers over disjoint parameters that step together, with one state dict (``adam_variant: lazy``)."""

    def __init__(self, dense, sparse):
        self.optimizers = (dense, sparse)

    @property
    def param_groups(self):
        return [group for opt in self.optimizers for group in opt.param_groups]

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self):
        return {"dense": self.optimizers[0].state_dict(), "sparse": self.optimizers[1].state_dict()}

    def load_state_dict(self, state):
        self.optimizers[0].load_state_dict(state["dense"])
        self.optimizers[1].load_state_dict(state["sparse"])


class DenseGradAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (ARERec's ``adam_variant: fused``) that also takes sparse gradients, with dense Adam's
    update: a sparse gradient is written into a persistent dense buffer per parameter (zero outside the rows it
    touches), which becomes ``param.grad`` for torch's step.  Every row moves every step, as with dense
    gradients; what is saved is the table-sized gradient a dense embedding backward allocates, page-faults in
    and zero-fills every step (on ml-100k at B = 16 that was two thirds of the training step).  State dict:
    torch's Adam's (the buffers are derived, not saved)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buffers = self.__dict__.setdefault("_dense_grads", {})
        for group in self.param_groups:
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                buffer, rows = buffers.get(id(param), (None, None))
                if not grad.is_sparse:  # dense this step (e.g. a large batch used the whole table)
                    if grad is buffer:
                        buffers[id(param)] = (buffer, None)  # zero_grad(set_to_none=False) kept it: all rows dirty
                    continue
                grad = grad.coalesce()
                if buffer is None:
                    buffer = torch.zeros_like(param)
                elif rows is None:
                    buffer.zero_()
                else:
                    buffer.index_fill_(0, rows, 0.0)  # only the rows the last sparse gradient wrote
                rows = grad.indices()[0]
                buffer.index_copy_(0, rows, grad.values())
                buffers[id(param)] = (buffer, rows)
                param.grad = buffer
        super().step()
        return loss


class BufferedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose default update (torch's single-tensor code path, op for op) writes its
    temporary ``sqrt(v) / sqrt(1 - beta2^t) + eps`` into a persistent buffer per parameter: bitwise the same
    updates and the same ``state_dict``, but no fresh tensors the size of each LCU table (20 M floats on
    ml-100k) to allocate and page in every step.  Other options (amsgrad, maximize, capturable, sparse or
    complex gradients, ...) take torch's own ``step``."""

    def _plain(self):
        return all(
            not (g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"] or g.get("fused")
                 or g.get("decoupled_weight_decay", False))
            and not isinstance(g["lr"], torch.Tensor)
            for g in self.param_groups
        ) and all(
            p.grad is None or not (p.grad.is_sparse or torch.is_complex(p))
            for g in self.param_groups for p in g["params"]
        )

    @torch.no_grad()
    def step(self, closure=None):
        if not self._plain():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buffers = self.__dict__.setdefault("_denominators", {})
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if len(state) == 0:  # as torch.optim.Adam._init_group (not capturable, not fused)
                    state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                step_t += 1
                if weight_decay != 0:
                    grad = grad.add(param, alpha=weight_decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = step_t.item()
                step_size = lr / (1 - beta1**step)
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                denom = buffers.get(id(param))
                if denom is None or denom.shape != param.shape or denom.dtype != param.dtype:
                    denom = buffers[id(param)] = torch.empty_like(exp_avg_sq)
                torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(eps)
                param.addcdiv_(exp_avg, denom, value=-step_size)
        return loss
