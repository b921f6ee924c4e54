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

import os

import torch
from recbole.utils import init_seed, set_color

from recbole_timeplug.checkpoint import TRUST_KEY, capture_rng_state, load_model_state, restore_rng_state
from recbole_timeplug.model.sequential_recommender.timirec import phase_of_state_dict
from recbole_timeplug.trainer import Trainer


class TiMiRecPretrainStageTrainer(Trainer):
    """Stage one of ``stage: both``: an ordinary safe trainer whose checkpoint files end in ``-pretrain``."""

    def _checkpoint_stem(self, config):
        return super()._checkpoint_stem(config) + "-pretrain"


class TiMiRecTrainer(Trainer):
    """Runs ``stage: both`` as pretrain -> hand-over -> finetune (module docstring); other stages as usual."""

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

    def resume_checkpoint(self, resume_file):
        if self.runs_both:
            payload = self._load(str(resume_file))
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
        super().resume_checkpoint(resume_file)

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
        if self._stage1_resume_file:
            stage.resume_checkpoint(self._stage1_resume_file)
        best_score, best_result = stage.fit(
            train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress
        )
        record = {
            "best_valid_score": None if best_result is None else float(best_score),
            "best_valid_result": None if best_result is None else {str(k): float(v) for k, v in best_result.items()},
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
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if eval_data and self._pretrain_test_pending and not self._in_fit and model_file is None:
            self._pretrain_test_pending = False
            self._test_pretrain_stage(eval_data, show_progress)
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
        record["test_result"] = {str(k): float(v) for k, v in result.items()}
        self.logger.info(
            set_color("TiMiRec stage 1/2 (pretrain) test result", "yellow") + f": {record['test_result']} ({source})"
        )
