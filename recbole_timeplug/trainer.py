"""Trainers with safe, exact checkpoints, for plugin and RecBole built-in models alike.

:class:`CheckpointMixin` sits in front of any RecBole trainer (``safe_trainer(recbole.trainer.Trainer)``
is this package's :class:`Trainer`) and changes only how checkpoints are written and read:

* files hold tensors and primitives only (``checkpoint.py``): ``torch.load(weights_only=True)`` works;
* a ``<name>-last.pth`` file is written after every epoch next to the best-so-far ``<name>.pth``, with
  RNG and DataLoader-generator state, so ``resume_checkpoint`` continues *exactly*;
* resuming writes to new files, never to the one it resumed from;
* under DDP all ranks agree on the file name and wait for rank 0 to finish writing before loading.

With ``torch_compile: True`` it also runs each training epoch through a ``torch.compile``-d
``model.calculate_loss`` (:class:`CompiledLoss`; evaluation stays eager, the module and its state_dict keys
are untouched; if compiling fails: one warning, then eager).

With ``sampled_eval_full_sort: True`` a sampled evaluation (``uni100``, ``pop100``, ...) scores each user's
candidates from one ``full_sort_predict`` row instead of one ``predict`` call per candidate row
(:meth:`CheckpointMixin._neg_sample_batch_eval`): a sequential model encodes each history once, not 101
times.  The candidates' scores are the same numbers up to float rounding (a matmul instead of row-wise dot
products), for a model whose ``predict`` equals its full-sort column (tested against RecBole's per-row path for
SASRec and TiSASRec).

A model with its own training procedure defines ``<Model>Trainer`` here (subclassing :class:`Trainer`
or ``safe_trainer(<RecBole trainer>)``); ``registry.get_trainer`` finds it by name.
"""

import os
import time

import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import EvaluatorType, get_local_time, init_seed, set_color

from recbole_timeplug.checkpoint import (
    TRUST_KEY,
    capture_rng_state,
    check_checkpoint_model,
    load_checkpoint,
    load_model_state,
    plain_config,
    plain_external_config,
    restore_rng_state,
    save_checkpoint,
)
from recbole_timeplug.errors import CheckpointError
from recbole_timeplug.evaluation import PerUserCapture, topk_metric_names
from recbole_timeplug.model.sequential_recommender.timirec import phase_of_state_dict
from recbole_timeplug.utils import plain_metrics
from recbole_timeplug.validation import ConfigChecks, torch_compile_setting


def _reserve_checkpoint_name(directory, stem):
    """``directory/stem[-n].pth``, reserved atomically (O_EXCL) so that runs started in the same second,
    e.g. parallel Ray trials, never share checkpoint files.  The empty placeholder is replaced by the
    first save, or removed if the run saves nothing."""
    os.makedirs(directory, exist_ok=True)
    n = 1
    while True:
        candidate = os.path.join(directory, stem if n == 1 else f"{stem}-{n}")
        if not os.path.exists(candidate + "-last.pth"):
            try:
                os.close(os.open(candidate + ".pth", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return candidate + ".pth"
            except FileExistsError:
                pass
        n += 1


class CompiledLoss:
    """``model.calculate_loss`` through ``torch.compile``; after a failure to compile, the eager method.

    The bound method is compiled, not the module: ``model`` stays a plain module (no ``_orig_mod.`` prefix in
    its state_dict, checkpoints and resume unchanged).  Compiling happens on the first call (and again when
    a new input shape comes, e.g. the last, smaller batch); any error there is logged once as a warning and
    training goes on eager (the batch is recomputed eagerly, so an error of the model itself is raised there).
    """

    def __init__(self, model, logger):
        self.model = model
        self.eager = model.calculate_loss
        self.logger = logger
        self.name = f"{type(model).__name__}.calculate_loss"
        try:
            self.compiled = torch.compile(self.eager)
        except Exception as err:  # noqa: BLE001 - e.g. torch.compile unavailable: fall back
            self._fall_back(err)
        else:
            logger.info(f"torch_compile: compiling {self.name} (the first training batches take longer)")

    def _fall_back(self, err):
        self.compiled = None
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        self.logger.warning(
            f"torch_compile: compiling {self.name} failed ({type(err).__name__}: {first_line}); training eager"
        )

    @property
    def active(self):
        """Whether the compiled function is (still) in use."""
        return self.compiled is not None

    def __call__(self, interaction):
        if self.compiled is not None:
            try:
                return self.compiled(interaction)
            except Exception as err:  # noqa: BLE001 - no C++ compiler, unsupported op, ...: fall back
                self._fall_back(err)
        return self.eager(interaction)


_NOT_SET = object()


def last_file_of(best_file):
    root, ext = os.path.splitext(best_file)
    return f"{root}-last{ext or '.pth'}"


class CheckpointMixin:
    """Safe and exact checkpointing for a RecBole ``Trainer`` subclass (see module docstring)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        torch.autograd.set_detect_anomaly(False)  # RecBole's sine.py may have switched it on
        self.distributed = not config["single_spec"]
        self.is_main = (not self.distributed) or config["local_rank"] == 0
        base = _reserve_checkpoint_name(self.checkpoint_dir, self._checkpoint_stem(config)) if self.is_main else None
        if self.distributed:  # every rank must name rank 0's file
            holder = [base]
            torch.distributed.broadcast_object_list(holder, src=0)
            base = holder[0]
        self.saved_model_file = base
        self.last_model_file = last_file_of(base)
        self.best_epoch = None
        self.resumed_from = None
        self._pending_rng = None
        self._train_data = None
        self._saved = True
        self._last_trained_epoch = None
        self._latest_valid_result = None
        # epoch -> validation score (``valid_metric``): with RecBole's ``train_loss_dict``, the run's learning
        # curve. Both are kept in every checkpoint, so a resumed run's curve is the whole run's.
        self.valid_score_dict = {}
        self._wrote_best = False
        self.torch_compile = torch_compile_setting(config)
        self.sampled_eval_full_sort = ConfigChecks(config["model"], config).boolean(
            "sampled_eval_full_sort", "score sampled-evaluation candidates from full_sort_predict", default=False)
        self.compiled_loss = None  # CompiledLoss of self.model, built at the first training epoch
        # callables (trainer, "train" | "valid", seconds), told after every epoch / validation pass, in every
        # training stage (``run_recbole(epoch_listeners=...)``; benchmarks time runs with them)
        self.epoch_listeners = []
        self.keep_per_user = False  # per-user metrics of each evaluation into per_user_result (see _evaluate_with)
        self.per_user_result = None

    def _checkpoint_stem(self, config):
        """File name stem of this trainer's checkpoints (a subclass may tag them, e.g. a training stage)."""
        return f"{config['model']}-{config['dataset']}-{get_local_time()}"

    # ------------------------------------------------------------------------------------ writing
    def _payload(self, epoch):
        return {
            "model": str(self.config["model"]),
            "dataset": str(self.config["dataset"]),
            "config": plain_config(self.config),
            "external_config": plain_external_config(self.config),
            "epoch": int(epoch),
            "best_epoch": None if self.best_epoch is None else int(self.best_epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": plain_metrics(self.best_valid_result),
            "train_loss_dict": {int(k): float(v) for k, v in self.train_loss_dict.items()},
            "valid_score_dict": {int(k): float(v) for k, v in self.valid_score_dict.items()},
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng_state(getattr(self._train_data, "generator", None)),
            "best_model_file": os.path.abspath(self.saved_model_file),
        }

    def _barrier(self):
        if self.distributed:
            torch.distributed.barrier()

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """Called by RecBole's ``fit`` when validation improves (or every epoch without validation)."""
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        if epoch < 0:
            # RecBole's fit() re-saves with epoch -1 when there is nothing left to train; the best
            # file of this run already exists after a resume, so keep it.
            if self._wrote_best:
                return
            epoch = self.start_epoch - 1
        self.best_epoch = epoch
        if self._latest_valid_result is not None:
            self.best_valid_result = self._latest_valid_result
        if self.is_main:
            save_checkpoint(self._payload(epoch), path)
            if verbose:
                self.logger.info(set_color("Saving current best", "blue") + f": {path}")
        self._wrote_best = True
        self._barrier()

    def _save_last_checkpoint(self, epoch):
        if self._saved and self.is_main:
            save_checkpoint(self._payload(epoch), self.last_model_file)
        self._barrier()

    # ------------------------------------------------------------------------------- training hooks
    def _timed(self, kind, run):
        """``run()``; with ``epoch_listeners``, each is told ``(trainer, kind, seconds)`` afterwards."""
        if not self.epoch_listeners:
            return run()
        start = time.perf_counter()
        out = run()
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        for listener in self.epoch_listeners:
            listener(self, kind, seconds)
        return out

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = self._timed(
            "valid", lambda: super(CheckpointMixin, self)._valid_epoch(valid_data, show_progress=show_progress)
        )
        self._latest_valid_result = valid_result
        if self._last_trained_epoch is not None:
            self.valid_score_dict[self._last_trained_epoch] = float(valid_score)
        return valid_score, valid_result

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        # The state at the start of epoch k+1 is the state at the end of epoch k (after its
        # validation and early-stopping update): that is the moment to write epoch k's -last file.
        if self._last_trained_epoch is not None:
            self._save_last_checkpoint(self._last_trained_epoch)
        self._train_data = train_data
        self._last_trained_epoch = epoch_idx
        return self._timed(
            "train",
            lambda: self._with_compiled_loss(
                lambda: super(CheckpointMixin, self)._train_epoch(train_data, epoch_idx, *args, **kwargs)
            ),
        )

    def _with_compiled_loss(self, run):
        """``run()``; with ``torch_compile``, ``self.model.calculate_loss`` is the compiled one during it.

        The compiled method is an instance attribute only while the epoch runs (every RecBole trainer asks
        ``self.model.calculate_loss``), then removed: the module is the eager one for evaluation and saving.
        """
        if not self.torch_compile:
            return run()
        model = self.model
        if self.compiled_loss is None or self.compiled_loss.model is not model:
            self.compiled_loss = CompiledLoss(model, self.logger)
        own = model.__dict__.get("calculate_loss", _NOT_SET)
        model.__dict__["calculate_loss"] = self.compiled_loss
        try:
            return run()
        finally:
            if own is _NOT_SET:
                model.__dict__.pop("calculate_loss", None)
            else:
                model.__dict__["calculate_loss"] = own

    def release_checkpoint_name(self):
        """Remove the empty placeholder of the reserved best-checkpoint name if this trainer never wrote it
        (training with ``saved=False``, or a ``test_only`` evaluation)."""
        if self.is_main and not self._wrote_best:
            _remove_placeholder(self.saved_model_file)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._train_data = train_data
        self._saved = saved
        self._last_trained_epoch = None
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng, getattr(train_data, "generator", None))
            self._pending_rng = None
        result = super().fit(
            train_data,
            valid_data,
            verbose=verbose,
            saved=saved,
            show_progress=show_progress,
            callback_fn=callback_fn,
        )
        if not saved:
            self.release_checkpoint_name()
        if self._last_trained_epoch is not None:
            self._save_last_checkpoint(self._last_trained_epoch)
            if saved and verbose:
                self.logger.info(set_color("Saving last epoch", "blue") + f": {self.last_model_file}")
        return result

    # ------------------------------------------------------------------------------------ reading
    def _load(self, path):
        payload = load_checkpoint(path, map_location=self.device, trust_legacy=bool(self.config[TRUST_KEY]))
        check_checkpoint_model(payload, self.config, path)
        return payload

    def _read(self, path, checkpoint=None):
        """``checkpoint`` if the caller has read ``path`` already (checked against this run), else the file."""
        if checkpoint is None:
            return self._load(path)
        check_checkpoint_model(checkpoint, self.config, path)
        return checkpoint

    def resume_checkpoint(self, resume_file, checkpoint=None):
        """Continue training from ``resume_file`` (a best or ``-last`` file) into new files.

        ``checkpoint``: the file's payload when the caller has read it already (it is not read again).
        """
        resume_file = str(resume_file)
        payload = self._read(resume_file, checkpoint)
        load_model_state(self.model, payload, self.config, resume_file)
        if payload.get("optimizer") is not None:
            try:
                self.optimizer.load_state_dict(payload["optimizer"])
            except ValueError as err:
                raise CheckpointError(
                    f"Optimizer state in {resume_file!r} does not fit this run's optimizer "
                    f"(`learner`: {self.config['learner']!r}): {err}"
                ) from None
        self.start_epoch = payload["epoch"] + 1
        self.cur_step = payload["cur_step"]
        if payload.get("best_valid_score") is not None:
            self.best_valid_score = payload["best_valid_score"]
        self.best_valid_result = payload.get("best_valid_result")
        self.best_epoch = payload.get("best_epoch")
        self.train_loss_dict = dict(payload.get("train_loss_dict") or {})
        self.valid_score_dict = dict(payload.get("valid_score_dict") or {})
        self._pending_rng = payload.get("rng")
        self.resumed_from = os.path.abspath(resume_file)
        if os.path.abspath(self.saved_model_file) in (self.resumed_from, last_file_of(self.resumed_from)):
            raise CheckpointError(f"Refusing to overwrite the checkpoint being resumed: {resume_file!r}")

        # This run's best file starts as the run's best so far, so that evaluating the best model
        # works even if no later epoch improves.
        if payload.get("best_epoch") == payload["epoch"] or payload.get("format") == "recbole-legacy":
            best = payload
        else:
            best_file = payload.get("best_model_file")
            if not best_file or not os.path.isfile(best_file):
                raise CheckpointError(
                    f"Cannot resume from {resume_file!r}: it points to the run's best checkpoint "
                    f"{best_file!r} (epoch {payload.get('best_epoch')}), which is missing. Put that file "
                    f"back, or resume from the best checkpoint itself."
                )
            best = self._load(best_file)
        if self.is_main and self._saved:
            best = dict(best)
            best["best_model_file"] = os.path.abspath(self.saved_model_file)
            save_checkpoint(best, self.saved_model_file)
        self._wrote_best = True
        self._barrier()
        self.logger.info(
            f"Checkpoint {resume_file} loaded (epoch {payload['epoch']}, best epoch {self.best_epoch}). "
            f"Resume training from epoch {self.start_epoch}; writing to {self.saved_model_file}"
        )

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False, checkpoint=None):
        """RecBole's evaluate; ``checkpoint`` is ``model_file``'s payload when the caller has read it already."""
        if not eval_data:
            return None
        model = self.model
        if load_best_model:
            self._barrier()
            checkpoint_file = model_file or self.saved_model_file
            payload = self._read(checkpoint_file, checkpoint)
            model = self._model_for_checkpoint(payload, eval_data)
            load_model_state(model, payload, self.config, checkpoint_file)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return self._evaluate_with(model, eval_data, show_progress)

    def _neg_sample_batch_eval(self, batched_data):
        """RecBole's sampled-evaluation batch; with ``sampled_eval_full_sort`` from one full-sort row per user.

        The fast form needs every user of the batch to have one positive: its rows (positive, then the sampled
        negatives) are then copies of one interaction that differ only in the item, so the first row stands
        for all.  Otherwise (several positives per user), for value-type evaluation, or for a model without
        ``full_sort_predict``, RecBole's per-row ``predict``."""
        interaction, row_idx, positive_u, positive_i = batched_data
        if not (self.sampled_eval_full_sort and self.config["eval_type"] == EvaluatorType.RANKING
                and row_idx is not None):
            return super()._neg_sample_batch_eval(batched_data)
        n_users = int(positive_u[-1]) + 1
        if len(positive_u) != n_users:  # a user with several positives: its rows may differ in more than the item
            return super()._neg_sample_batch_eval(batched_data)
        first = torch.ones(len(row_idx), dtype=torch.bool)
        first[1:] = row_idx[1:] != row_idx[:-1]
        users = interaction[torch.nonzero(first).squeeze(1)]
        try:
            full = self.model.full_sort_predict(users.to(self.device))
        except NotImplementedError:
            return super()._neg_sample_batch_eval(batched_data)
        full = full.view(n_users, -1)
        rows, cols = row_idx.to(self.device), interaction[self.config["ITEM_ID_FIELD"]].to(self.device)
        scores = torch.full((n_users, self.tot_item_num), float("-inf"), device=self.device)
        scores[rows, cols] = full[rows, cols].to(scores.dtype)
        return interaction, scores, positive_u, positive_i

    def _model_for_checkpoint(self, payload, eval_data):
        """The model a checkpoint's weights go into for evaluation; multi-stage trainers pick per stage."""
        return self.model

    def _evaluate_with(self, model, eval_data, show_progress):
        """RecBole's evaluation of ``model`` (``self.model`` is swapped in for the call, then restored).

        With ``keep_per_user`` set (``run_recbole(per_user=True)`` sets it for the test pass only), the
        per-user top-k metrics of the pass are left in ``per_user_result`` (``evaluation.PerUserCapture``).
        """
        own = self.model
        self.model = model
        try:
            if not self.keep_per_user:
                return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
            with PerUserCapture(self) as capture:
                result = super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
            self.per_user_result = capture.metrics(topk_metric_names(self.config), eval_data)
            return result
        finally:
            self.model = own


def _remove_placeholder(path):
    if path and os.path.isfile(path) and os.path.getsize(path) == 0:
        os.remove(path)


_SAFE_CACHE = {}


def safe_trainer(base):
    """``base`` (a RecBole trainer class) with :class:`CheckpointMixin` in front, cached per class."""
    if issubclass(base, CheckpointMixin):
        return base
    if base not in _SAFE_CACHE:
        _SAFE_CACHE[base] = type(base.__name__, (CheckpointMixin, base), {"__module__": __name__})
    return _SAFE_CACHE[base]


Trainer = safe_trainer(RecBoleTrainer)



# -------------------------------------------------------------------------------- ARERec
class ARERecTrainer(Trainer):
    """ARERec: with ``learner: adam`` the optimizer is the Adam variant of ``adam_variant`` (``ARERec.build_optimizer``)."""

    def _build_optimizer(self, **kwargs):
        model = getattr(self.model, "module", self.model)  # DDP wraps the model
        if not kwargs and str(self.learner).lower() == "adam" and hasattr(model, "build_optimizer"):
            return model.build_optimizer(self.learning_rate, self.weight_decay)
        return super()._build_optimizer(**kwargs)


# -------------------------------------------------------------------------------- TiMiRec
class TiMiRecPretrainStageTrainer(Trainer):
    """Stage one of ``stage: both``: an ordinary safe trainer whose checkpoint files end in ``-pretrain``."""

    def _checkpoint_stem(self, config):
        return super()._checkpoint_stem(config) + "-pretrain"


class TiMiRecTrainer(Trainer):
    """TiMiRec's two-stage training in one run (``stage: both``), with safe, exact checkpoints in both stages.

    ``registry.get_trainer`` returns :class:`TiMiRecTrainer` for ``--model=TiMiRec``.  With ``stage: pretrain`` or
    ``stage: finetune`` it is this package's plain :class:`~recbole_timeplug.trainer.Trainer`.  With
    ``stage: both`` (the default) the model RecBole builds is the *finetune* model, and ``fit`` does:

    1. **stage 1/2, pretrain**: re-seed (``seed``), build a pretrain-only TiMiRec (the extractor, i.e.
       ComiRec-SA+) and train it to early stopping on the same ``train_data``/``valid_data`` with a stage
       trainer whose files are tagged ``-pretrain`` (``TiMiRec-<dataset>-<time>-pretrain.pth`` and ``-last``);
    2. hand over: load the ``interest_extractor.*`` tensors of stage one's best checkpoint file into the
       finetune model (``TiMiRec.load_pretrained``: counted, shapes checked);
    3. **stage 2/2, finetune**: restore the RNG state (python/numpy/torch and the DataLoader generator) that
       held when ``fit`` was entered, so stage two runs exactly as a separate
       ``--stage=finetune --pretrained_path=<stage-one file>`` run with the same seed; then train as usual
       (files ``TiMiRec-<dataset>-<time>.pth``/``-last``).

    The final ``evaluate`` on the test data also tests stage one's best model on the same data, so the run
    shows the pretrain-only (ComiRec+-like) numbers beside TiMiRec's; both are in ``trainer.stage_results``
    (and ``run_recbole``'s result under ``"stages"``).

    Resume (``checkpoint_path``) with ``stage: both``: the file's weights say which stage wrote it.

    * a ``-pretrain`` file (extractor only): stage one resumes exactly from it (into new files), then stage two
      runs from the start;
    * a finetune file: stage one is finished; stage two resumes exactly.  The stage-one record (its best file
      and valid result) travels in the checkpoint (``timirec_stages``), and its test numbers are recomputed at
      the end if that file still exists.

    Test-only (``checkpoint_path`` + ``test_only``) evaluates whichever stage wrote the file, with that stage's
    scoring (max over interests for a pretrain file).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.stage_results = {}
        self._stage1_resume_file = None  # a -pretrain checkpoint to resume stage one from
        self._stage1_finished = False  # resumed from a finetune checkpoint: stage one is done
        self._pretrain_best_file = None  # stage one's best checkpoint (handed over, tested at the end)
        self._pretrain_test_pending = False
        self._in_fit = False

    @property
    def runs_both(self):
        return getattr(self.model, "stage", None) == "both" and self.model.phase == "finetune"

    # --------------------------------------------------------------------------------- checkpoints
    def _payload(self, epoch):
        payload = super()._payload(epoch)
        payload["timirec_stages"] = {k: dict(v) for k, v in self.stage_results.items()}
        return payload

    def resume_checkpoint(self, resume_file, checkpoint=None):
        if self.runs_both:
            payload = checkpoint = self._read(str(resume_file), checkpoint)
            if phase_of_state_dict(payload["state_dict"]) == "pretrain":
                self._stage1_resume_file = str(resume_file)
                self.logger.info(
                    f"TiMiRec stage: both: {resume_file} is a stage-one (pretrain) checkpoint: stage one resumes "
                    f"from it, then stage two (finetune) runs from the start."
                )
                return
            self._stage1_finished = True
            self.stage_results = {k: dict(v) for k, v in (payload.get("timirec_stages") or {}).items()}
            best = self.stage_results.get("pretrain", {}).get("best_model_file")
            if best and os.path.isfile(best):
                self._pretrain_best_file = best
            self.logger.info(
                f"TiMiRec stage: both: {resume_file} is a stage-two (finetune) checkpoint: stage one is finished "
                f"(best file {best}); resuming stage two."
            )
        super().resume_checkpoint(resume_file, checkpoint)

    # ------------------------------------------------------------------------------------ training
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._in_fit = True
        try:
            if self.runs_both and not self._stage1_finished:
                generator = getattr(train_data, "generator", None)
                rng = capture_rng_state(generator)
                self._pretrain_stage(train_data, valid_data, verbose, saved, show_progress)
                restore_rng_state(rng, generator)
                self.logger.info(set_color("TiMiRec stage 2/2: finetune with target-interest distillation", "green"))
            result = super().fit(
                train_data,
                valid_data,
                verbose=verbose,
                saved=saved,
                show_progress=show_progress,
                callback_fn=callback_fn,
            )
        finally:
            self._in_fit = False
        self._pretrain_test_pending = self.runs_both and (
            self._pretrain_best_file is not None or "pretrain_model" in self.__dict__
        )
        return result

    def _pretrain_stage(self, train_data, valid_data, verbose, saved, show_progress):
        config = self.config
        self.logger.info(set_color("TiMiRec stage 1/2: pretrain the multi-interest extractor", "green"))
        # the same seed as a separate --stage=pretrain run, so stage one reproduces it
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = type(self.model)(config, train_data._dataset, stage="pretrain").to(self.device)
        stage = TiMiRecPretrainStageTrainer(config, model)
        stage.epoch_listeners = self.epoch_listeners
        if self._stage1_resume_file:
            stage.resume_checkpoint(self._stage1_resume_file)
        best_score, best_result = stage.fit(
            train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress
        )
        record = {
            "best_valid_score": None if best_result is None else float(best_score),
            "best_valid_result": plain_metrics(best_result),
            "best_epoch": None if stage.best_epoch is None else int(stage.best_epoch),
        }
        if saved:
            self._pretrain_best_file = os.path.abspath(stage.saved_model_file)
            record["best_model_file"] = self._pretrain_best_file
            record["last_model_file"] = os.path.abspath(stage.last_model_file)
            self.model.load_pretrained(
                self._pretrain_best_file, trust_legacy=bool(config[TRUST_KEY]), role="stage one's best checkpoint"
            )
        else:
            # nothing written (e.g. hyper-search with saved=False): hand over the last epoch's extractor in memory
            self.model.load_extractor_state(model.state_dict(), "stage-one model in memory (saved=False: last epoch)")
            self.__dict__["pretrain_model"] = model
        self.stage_results["pretrain"] = record
        self.logger.info(
            set_color("TiMiRec stage 1/2 (pretrain) best valid", "yellow") + f": {record['best_valid_result']}"
        )
        del stage

    # ---------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False, checkpoint=None):
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress, checkpoint)
        if eval_data and self._pretrain_test_pending and not self._in_fit and model_file is None:
            self._pretrain_test_pending = False
            final_per_user = self.per_user_result
            self._test_pretrain_stage(eval_data, show_progress)
            self.per_user_result = final_per_user  # the final model's; stage one's went into its record
        return result

    def _model_for_checkpoint(self, payload, eval_data):
        return self._model_for(phase_of_state_dict(payload["state_dict"]), eval_data)

    def _model_for(self, phase, eval_data):
        """``self.model`` if it has the checkpoint's structure, else a TiMiRec of that stage (test-only)."""
        if phase == self.model.phase:
            return self.model
        return type(self.model)(self.config, eval_data._dataset, stage=phase).to(self.device)

    def _test_pretrain_stage(self, eval_data, show_progress):
        """The pretrain-only (ComiRec+-like) model of stage one, tested on the data the final model was tested on."""
        model = self.__dict__.get("pretrain_model")
        source = "stage-one model in memory"
        if model is None:
            model = self._model_for("pretrain", eval_data)
            payload = self._load(self._pretrain_best_file)
            load_model_state(model, payload, self.config, self._pretrain_best_file)
            source = self._pretrain_best_file
        result = self._evaluate_with(model, eval_data, show_progress)
        record = self.stage_results.setdefault("pretrain", {})
        record["test_result"] = plain_metrics(result)
        if self.keep_per_user:
            record["test_per_user"] = self.per_user_result
        self.logger.info(
            set_color("TiMiRec stage 1/2 (pretrain) test result", "yellow") + f": {record['test_result']} ({source})"
        )
