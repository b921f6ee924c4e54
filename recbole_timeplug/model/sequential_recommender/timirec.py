"""TiMiRec: target-interest distillation for multi-interest recommendation.

Wang, Ma, Zhang, Liu and Ma, "Target Interest Distillation for Multi-Interest Recommendation", CIKM 2022
(official code: github.com/THUwangcy/ReChorus, branch ``CIKM22``, ``src/models/sequential/TiMiRec.py``).
Equations and deviations from the official code: ``docs/models.md`` §4, whose sections are cited below.

Two stages share one extractor (``recbole_timeplug.layers.interest``), whose parameters keep the names
``interest_extractor.*`` in both stages so that a pretrain checkpoint loads into the finetune model:

* **pretrain** (``phase == "pretrain"``; a ComiRec-SA model, "ComiRec+" with ``add_trm``):
  interests ``z = extractor(history)`` (§4.2); training routes to ``k* = argmax_k z_k . E[i+]`` and scores
  ``y(c) = z_k* . E[c]``; evaluation scores ``y(c) = max_k z_k . E[c]`` (§4.3).
* **finetune** (``phase == "finetune"``; TiMiRec, "TiMiRec+" with ``add_trm``): a student
  ``l = proj(GRU(F[history]))`` in R^K predicts the target interest; user vector ``u = sum_k softmax(l)_k z_k``
  scores ``y(c) = u . E[c]`` (train and eval); the teacher ``t_k = cos(z_k, E[i+])`` is detached and only
  used in training (§4.4).  Loss::

      L = L_rec(u) + T^2 * KL( softmax(t / T) || softmax(l / T) )        (batch mean)

  ``L_rec`` is BPR with one uniform negative (``loss_type: BPR``, the paper's) or softmax cross-entropy over
  all items (``loss_type: CE``).  The extractor is initialised from the pretrain checkpoint
  (``pretrained_path``); a finetune run without one is an error unless ``require_pretrained: False``.

``stage`` (config) is ``pretrain``, ``finetune`` or ``both`` (default): ``both`` builds the finetune model
here and lets :class:`recbole_timeplug.trainer.TiMiRecTrainer` pretrain a separate extractor first and hand
it over through the stage-one checkpoint file (see that class for resume and test-only semantics).
"""

import os

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss

from recbole_timeplug.checkpoint import TRUST_KEY, load_checkpoint
from recbole_timeplug.errors import CheckpointError, ModelConfigError
from recbole_timeplug.layers.interest import (
    InterestPredictor,
    MultiInterestExtractor,
    build_projection,
    distillation_loss,
    max_interest_item_scores,
    max_interest_scores,
    mix_interests,
    select_target_interest,
    target_interest_logits,
)
from recbole_timeplug.validation import ConfigChecks

STAGES = ("pretrain", "finetune", "both")
EXTRACTOR_PREFIX = "interest_extractor."
# keys whose values decide the extractor's tensor shapes: named when a pretrained file does not fit
EXTRACTOR_SHAPE_KEYS = ("embedding_size", "attn_size", "n_interests", "add_pos", "add_trm", "MAX_ITEM_LIST_LENGTH")


TiMiRecConfigError = ModelConfigError  # the name before the shared ModelConfigError; kept importable


def phase_of_state_dict(state_dict):
    """``"finetune"`` if the weights include the student (``interest_predictor.*``/``proj.*``), else ``"pretrain"``."""
    student = any(k.startswith(("interest_predictor.", "proj.")) for k in state_dict)
    return "finetune" if student else "pretrain"


class TiMiRec(SequentialRecommender):
    r"""TiMiRec (and its pretrain stage, ComiRec-SA+).  See the module docstring for the equations.

    Args:
        config, dataset: as every RecBole model.
        stage: ``"pretrain"`` or ``"finetune"`` to build that stage's model whatever ``config['stage']``
            says (used by ``TiMiRecTrainer`` for ``stage: both``); ``None`` (RecBole's call) follows the
            config: ``pretrain`` -> pretrain model; ``finetune`` -> finetune model initialised from
            ``pretrained_path``; ``both`` -> finetune model, extractor handed over later by the trainer.
    """

    def __init__(self, config, dataset, stage=None):
        super().__init__(config, dataset)
        check = ConfigChecks("TiMiRec", config)
        self.stage = check.one_of("stage", STAGES, default="both")
        phase = stage or ("pretrain" if self.stage == "pretrain" else "finetune")
        if phase not in ("pretrain", "finetune"):
            raise ValueError(f"TiMiRec(stage=...) must be 'pretrain' or 'finetune', got {stage!r}.")
        self.phase = phase
        self.dataset_name = str(config["dataset"])
        self.embedding_size = check.positive_int("embedding_size")
        self.attn_size = check.positive_int("attn_size")
        self.n_interests = check.positive_int("n_interests")
        self.temperature = check.number("temperature", "the distillation temperature T", low=0)
        self.proj_layers = check.positive_int("proj_layers")
        self.loss_type = check.loss_type(("BPR", "CE"))
        self.freeze_extractor = bool(config["freeze_extractor"])
        self.dropout_prob = check.probability("dropout_prob", default=0.0)

        self.interest_extractor = MultiInterestExtractor(
            self.n_items,
            self.embedding_size,
            self.attn_size,
            self.n_interests,
            self.max_seq_length,
            add_pos=bool(config["add_pos"]),
            add_trm=bool(config["add_trm"]),
            dropout_prob=self.dropout_prob,
        )
        if self.phase == "finetune":  # the student exists only in the finetune model (docs/models.md §4.4)
            self.interest_predictor = InterestPredictor(self.n_items, self.embedding_size)
            self.proj = build_projection(self.embedding_size, self.n_interests, self.proj_layers)
        self.rec_loss = BPRLoss() if self.loss_type == "BPR" else nn.CrossEntropyLoss()
        self.apply(self._init_weights)

        self.pretrained_loaded = 0
        if stage is None and self.stage == "finetune":
            self._init_from_pretrained(config)
        elif self.stage == "both" and config["pretrained_path"]:
            raise check.error(
                "pretrained_path",
                config["pretrained_path"],
                "`stage: both` pretrains its own extractor: use --stage=finetune to start from that file, "
                "or drop pretrained_path",
            )
        if self.phase == "finetune" and self.freeze_extractor:
            self.interest_extractor.requires_grad_(False)

    # -------------------------------------------------------------------------------------- init
    @staticmethod
    def _init_weights(module):
        """ReChorus' init: every Linear weight *and bias* and every Embedding ~ N(0, 0.01); GRU/LN default."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.01)
            if module.bias is not None:
                nn.init.normal_(module.bias, mean=0.0, std=0.01)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.01)

    def _init_from_pretrained(self, config):
        if config["checkpoint_path"]:
            # resume / test-only: every weight comes from that checkpoint, the pretrain file is not needed
            self.logger.info("TiMiRec finetune: weights come from `checkpoint_path`; `pretrained_path` not loaded.")
            return
        path = config["pretrained_path"]
        if path:
            if os.path.isfile(str(path)) or config["require_pretrained"]:
                self.load_pretrained(path, trust_legacy=bool(config[TRUST_KEY]))
                return
            self.logger.warning(f"TiMiRec finetune: pretrained_path {path!r} does not exist; training from scratch "
                                f"(require_pretrained: False).")
            return
        if config["require_pretrained"]:
            raise CheckpointError(
                "TiMiRec with `stage: finetune` needs a pretrained extractor, but `pretrained_path` is not set. "
                "Either run both stages in one command (--stage=both, the default), or pretrain first "
                "(--stage=pretrain) and pass its best checkpoint: --stage=finetune --pretrained_path=<file.pth>. "
                "To train the finetune stage from scratch on purpose (ablation), set --require_pretrained=False."
            )
        self.logger.warning(
            "TiMiRec finetune: no pretrained extractor, training from scratch (require_pretrained: False)."
        )

    def extractor_state_dict(self):
        return {k: v for k, v in self.state_dict().items() if k.startswith(EXTRACTOR_PREFIX)}

    def load_pretrained(self, path, trust_legacy=False, role="`pretrained_path`"):
        """Copy the ``interest_extractor.*`` tensors of checkpoint ``path`` into this model; returns their count.

        Every extractor tensor of this model must be in the file with the same shape (else
        :class:`CheckpointError` naming the keys and the config values that differ); the student
        (``interest_predictor.*``, ``proj.*``) keeps its fresh initialisation.
        """
        payload = load_checkpoint(str(path), map_location="cpu", trust_legacy=trust_legacy)
        where = f"pretrained file {str(path)!r} ({role})"
        if payload.get("model") not in (None, "None", "TiMiRec"):
            raise CheckpointError(f"The {where} holds a {payload['model']!r} model, not TiMiRec.")
        if payload.get("dataset") not in (None, "None", self.dataset_name):
            raise CheckpointError(
                f"The {where} was trained on dataset {payload['dataset']!r}, but this run uses {self.dataset_name!r}: "
                f"item ids would not match. Pretrain on the same dataset (same filtering and seed)."
            )
        where += f", epoch {payload.get('epoch')}"
        return self.load_extractor_state(payload["state_dict"], where, stored_config=payload.get("config"))

    def load_extractor_state(self, state_dict, where="pretrained weights", stored_config=None):
        """Copy the ``interest_extractor.*`` tensors of ``state_dict``; strict on that namespace (see above)."""
        theirs = {k: v for k, v in state_dict.items() if k.startswith(EXTRACTOR_PREFIX)}
        own = self.extractor_state_dict()
        if not theirs:
            raise CheckpointError(f"The {where} holds no `{EXTRACTOR_PREFIX}*` tensors: nothing to load.")
        missing = sorted(set(own) - set(theirs))
        extra = sorted(set(theirs) - set(own))
        shapes = [(k, tuple(theirs[k].shape), tuple(own[k].shape)) for k in sorted(set(own) & set(theirs))
                  if theirs[k].shape != own[k].shape]
        if missing or extra or shapes:
            stored = stored_config or {}
            diffs = [f"  {k}: file {stored.get(k, '<unknown>')!r}, this run {self._config_value(k)!r}"
                     for k in EXTRACTOR_SHAPE_KEYS if stored.get(k, self._config_value(k)) != self._config_value(k)]
            lines = [f"The {where} does not fit this model's extractor:"]
            if missing:
                lines.append(f"  missing in the file: {missing}")
            if extra:
                lines.append(f"  not in this model: {extra}")
            for k, a, b in shapes:
                lines.append(f"  {k}: file {a}, this model {b}")
            if diffs:
                lines.append("Config keys that differ:\n" + "\n".join(diffs))
            lines.append("Finetune with the extractor settings (and dataset filtering) the file was pretrained with.")
            raise CheckpointError("\n".join(lines))
        result = self.load_state_dict({k: v.to(own[k].device) for k, v in theirs.items()}, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        self.pretrained_loaded = len(theirs)
        n_student = sum(v.numel() for k, v in self.state_dict().items() if not k.startswith(EXTRACTOR_PREFIX))
        self.logger.info(
            f"TiMiRec: loaded {len(theirs)} interest_extractor tensors from {where}; "
            f"{n_student} other weights (student) keep their initialisation."
        )
        return len(theirs)

    def _config_value(self, key):
        return {
            "embedding_size": self.embedding_size,
            "attn_size": self.attn_size,
            "n_interests": self.n_interests,
            "add_pos": self.interest_extractor.add_pos,
            "add_trm": self.interest_extractor.add_trm,
            "MAX_ITEM_LIST_LENGTH": self.max_seq_length,
        }[key]

    # -------------------------------------------------------------------------------------- forward
    def forward(self, item_seq, item_seq_len):
        """Interest vectors ``z`` [B, K, d] and, in the finetune model, the student logits ``l`` [B, K]."""
        interests = self.interest_extractor(item_seq, item_seq_len)
        if self.phase == "pretrain":
            return interests, None
        return interests, self.proj(self.interest_predictor(item_seq, item_seq_len))

    def _user_vector(self, interests, logits):
        return mix_interests(interests, logits)

    def _rec_loss(self, user, interaction):
        item_table = self.interest_extractor.item_embedding
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            pos_score = (user * item_table(pos_items)).sum(-1)
            neg_score = (user * item_table(interaction[self.NEG_ITEM_ID])).sum(-1)
            return self.rec_loss(pos_score, neg_score)
        return self.rec_loss(torch.matmul(user, item_table.weight.t()), pos_items)

    def calculate_loss(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        interests, logits = self.forward(item_seq, item_seq_len)
        target = self.interest_extractor.item_embedding(interaction[self.POS_ITEM_ID])
        if self.phase == "pretrain":
            # hard routing by dot product with the target (ComiRec), only the chosen interest is trained
            return self._rec_loss(select_target_interest(interests, target), interaction)
        rec = self._rec_loss(self._user_vector(interests, logits), interaction)
        teacher = target_interest_logits(interests, target)  # cosine, detached
        return rec, distillation_loss(logits, teacher, self.temperature)

    def predict(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        interests, logits = self.forward(item_seq, item_seq_len)
        cand = self.interest_extractor.item_embedding(interaction[self.ITEM_ID])
        if self.phase == "pretrain":
            return max_interest_item_scores(interests, cand)
        return (self._user_vector(interests, logits) * cand).sum(-1)

    def full_sort_predict(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        interests, logits = self.forward(item_seq, item_seq_len)
        items = self.interest_extractor.item_embedding.weight
        if self.phase == "pretrain":
            return max_interest_scores(interests, items)  # never builds the B x K x N tensor
        return torch.matmul(self._user_vector(interests, logits), items.t())
