"""Trainers with safe, exact checkpoints, for plugin and RecBole built-in models alike.

:class:`CheckpointMixin` sits in front of any RecBole trainer (``safe_trainer(recbole.trainer.Trainer)``
is this package's :class:`Trainer`) and changes only how checkpoints are written and read:

* files hold tensors and primitives only (``checkpoint.py``): ``torch.load(weights_only=True)`` works;
* a ``<name>-last.pth`` file is written after every epoch next to the best-so-far ``<name>.pth``, with
  RNG and DataLoader-generator state, so ``resume_checkpoint`` continues *exactly*;
* resuming writes to new files, never to the one it resumed from;
* under DDP all ranks agree on the file name and wait for rank 0 to finish writing before loading.

A model with its own training procedure defines ``<Model>Trainer`` here (subclassing :class:`Trainer`
or ``safe_trainer(<RecBole trainer>)``); ``registry.get_trainer`` finds it by name.
"""

import os

import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import get_local_time, set_color

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
        self._wrote_best = False

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
            "best_valid_result": _plain_result(self.best_valid_result),
            "train_loss_dict": {int(k): float(v) for k, v in self.train_loss_dict.items()},
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
    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._latest_valid_result = valid_result
        return valid_score, valid_result

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        # The state at the start of epoch k+1 is the state at the end of epoch k (after its
        # validation and early-stopping update): that is the moment to write epoch k's -last file.
        if self._last_trained_epoch is not None:
            self._save_last_checkpoint(self._last_trained_epoch)
        self._train_data = train_data
        self._last_trained_epoch = epoch_idx
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

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
        if not saved and self.is_main and not self._wrote_best:
            _remove_placeholder(self.saved_model_file)
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

    def resume_checkpoint(self, resume_file):
        """Continue training from ``resume_file`` (a best or ``-last`` file) into new files."""
        resume_file = str(resume_file)
        payload = self._load(resume_file)
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
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        model = self.model
        if load_best_model:
            self._barrier()
            checkpoint_file = model_file or self.saved_model_file
            payload = self._load(checkpoint_file)
            model = self._model_for_checkpoint(payload, eval_data)
            load_model_state(model, payload, self.config, checkpoint_file)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return self._evaluate_with(model, eval_data, show_progress)

    def _model_for_checkpoint(self, payload, eval_data):
        """The model a checkpoint's weights go into for evaluation; multi-stage trainers pick per stage."""
        return self.model

    def _evaluate_with(self, model, eval_data, show_progress):
        """RecBole's evaluation of ``model`` (``self.model`` is swapped in for the call, then restored)."""
        own = self.model
        self.model = model
        try:
            return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
        finally:
            self.model = own


def _remove_placeholder(path):
    if path and os.path.isfile(path) and os.path.getsize(path) == 0:
        os.remove(path)


def _plain_result(result):
    if result is None:
        return None
    return {str(k): float(v) for k, v in dict(result).items()}


_SAFE_CACHE = {}


def safe_trainer(base):
    """``base`` (a RecBole trainer class) with :class:`CheckpointMixin` in front, cached per class."""
    if issubclass(base, CheckpointMixin):
        return base
    if base not in _SAFE_CACHE:
        _SAFE_CACHE[base] = type(base.__name__, (CheckpointMixin, base), {"__module__": __name__})
    return _SAFE_CACHE[base]


Trainer = safe_trainer(RecBoleTrainer)

# Model trainers that live in their own modules: ``<Model>Trainer`` -> module.  Imported on first access
# (PEP 562) so that they can subclass :class:`Trainer` without an import cycle.
_TRAINER_MODULES = {"TiMiRecTrainer": "recbole_timeplug.timirec_trainer"}


def __getattr__(name):
    if name in _TRAINER_MODULES:
        import importlib

        return getattr(importlib.import_module(_TRAINER_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
