"""Entry points mirroring ``recbole.quick_start`` for plugin and RecBole models alike.

``run`` / ``run_recbole`` / ``run_recboles`` / ``objective_function`` / ``load_data_and_model`` behave like
RecBole's, plus:

* plugin models and YAMLs resolve everywhere (this package's ``Config``, ``get_model``, ``get_trainer``);
* ``checkpoint_path`` resumes training exactly; with ``test_only: True`` it evaluates saved weights;
* data and config problems fail early with messages that say what to do (``errors.py``).

Nothing here imports ``recbole.quick_start`` (it imports ray at module top); ray is imported only by
``hyper.py`` when Ray Tune is asked for.
"""

import logging
import os
import sys
from collections.abc import MutableMapping
from logging import getLogger

import torch
import yaml
from recbole.data import create_dataset, data_preparation
from recbole.utils import ModelType, get_environment, init_logger, init_seed, set_color

from recbole_timeplug.checkpoint import TRUST_KEY, check_checkpoint_model, load_checkpoint, load_model_state
from recbole_timeplug.config import Config, needed_field_keys
from recbole_timeplug.data.checks import empty_data_message, missing_timestamp_policy
from recbole_timeplug.errors import DataError, DatasetNotFoundError, MissingFieldError, TimeplugError
from recbole_timeplug.registry import get_model, get_trainer
from recbole_timeplug.utils import plain_metrics
from recbole_timeplug.validation import check_sequence_length, torch_compile_setting

DATASET_DOCS = "dataset/README.md"


# ---------------------------------------------------------------------------------------- checks
def _recbole_download_names():
    import recbole

    path = os.path.join(os.path.dirname(recbole.__file__), "properties", "dataset", "url.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            return set((yaml.safe_load(f) or {}).keys())
    except OSError:  # pragma: no cover
        return set()


def check_dataset_files(config):
    """Fail early, saying where we looked and how to get the data, when the atomic files are missing."""
    path = os.path.abspath(config["data_path"])
    token = config["dataset"]
    if config["benchmark_filename"]:
        wanted = [os.path.join(path, f"{token}.{part}.inter") for part in config["benchmark_filename"]]
    else:
        wanted = [os.path.join(path, f"{token}.inter")]
    missing = [w for w in wanted if not os.path.isfile(w)]
    if not missing:
        return
    known = token in _recbole_download_names()
    if known and config["download"]:
        return  # RecBole downloads it (needs internet)
    where = "the folder does not exist" if not os.path.isdir(path) else f"the folder holds {sorted(os.listdir(path))[:8]}"
    lines = [
        f"Dataset {token!r} not found: looked for {', '.join(missing)} ({where}).",
        f"  - Put RecBole atomic files ({token}.inter with user_id:token, item_id:token, timestamp:float) in "
        f"{path}, or point `data_path` at the folder that contains {token}/ (data_path is {config['data_path']!r} "
        f"minus the dataset name).",
        f"  - To convert raw data (MovieLens, Amazon, Steam, KuaiRand, CSV) see {DATASET_DOCS}.",
    ]
    if known:
        lines.append(f"  - RecBole can download {token!r} itself on a machine with internet: add --download=True.")
    raise DatasetNotFoundError("\n".join(lines))


def check_required_fields(config, model_class, dataset=None):
    """A model lists the config keys of fields it needs in ``needs_fields`` (e.g. ``("TIME_FIELD",)``);
    data ordered by time (sequential models, ``order: TO``) need ``TIME_FIELD`` too."""
    for key in needed_field_keys(model_class, config.final_config_dict):
        field = config[key]
        if not field:
            raise MissingFieldError(
                f"Model {config['model']} needs the `{key}` field, but `{key}` is not set in the config."
            )
        load_col = config["load_col"]
        if isinstance(load_col, dict) and field not in (load_col.get("inter") or []):
            raise MissingFieldError(
                f"Model {config['model']} needs the `{field}` column (config key `{key}`), but `load_col` loads "
                f"only {load_col.get('inter')} from the .inter file. Add it, e.g. "
                f"load_col: {{inter: [{config['USER_ID_FIELD']}, {config['ITEM_ID_FIELD']}, {field}]}}."
            )
        if dataset is not None and field not in dataset.field2type:
            raise MissingFieldError(
                f"Model {config['model']} needs the `{field}` column (config key `{key}`), but "
                f"{os.path.join(config['data_path'], config['dataset'] + '.inter')} has no such column "
                f"(it has {sorted(dataset.field2type)}). Add it, or set `{key}` to the column's name."
            )


# ---------------------------------------------------------------------------------------- config
def _checkpoint_payload(config_file_list, config_dict):
    """If the user set ``checkpoint_path``, the checkpoint's payload (loaded safely on CPU) and its path."""
    external = Config.external_only(config_file_list, config_dict)
    path = external.get("checkpoint_path")
    if not path:
        return None, None, external
    return load_checkpoint(path, map_location="cpu", trust_legacy=bool(external.get(TRUST_KEY))), path, external


def build_config(model=None, dataset=None, config_file_list=None, config_dict=None):
    """This package's Config; with ``checkpoint_path`` the checkpoint's own settings are the base layer."""
    payload, path, external = _checkpoint_payload(config_file_list, config_dict)
    if payload is None:
        return Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict), None
    model = model or external.get("model") or payload["model"]
    dataset = dataset or external.get("dataset") or payload["dataset"]
    config = Config(
        model=model,
        dataset=dataset,
        config_file_list=config_file_list,
        config_dict=config_dict,
        base_config_dict=payload.get("external_config"),
    )
    check_checkpoint_model(payload, config, path)
    return config, payload


def _prepare(config, logger=None):
    model_class = get_model(config["model"])
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        check_sequence_length(config)
    check_dataset_files(config)
    for note in getattr(config, "timeplug_notes", ()):
        (logger or getLogger()).info(note)
    check_required_fields(config, model_class)
    missing_timestamp_policy(config)  # a bad value fails before the data is read
    torch_compile_setting(config)  # (the trainer reads it; a bad value fails here, before the data is read)
    dataset = create_dataset(config)
    check_required_fields(config, model_class, dataset)
    if len(dataset.inter_feat) == 0:
        raise DataError(empty_data_message(dataset))
    if logger:
        logger.info(dataset)
    counts = _history_lengths(dataset)  # before data_preparation: a sequential dataset's build() replaces inter_feat
    try:
        train_data, valid_data, test_data = data_preparation(config, dataset)
    except ValueError as err:  # torch's sampler: "num_samples should be a positive integer value, but got 0"
        if "num_samples" not in str(err):
            raise
        raise DataError(_no_training_samples(config, counts)) from None
    return model_class, dataset, train_data, valid_data, test_data


def _history_lengths(dataset):
    """(interactions, users, longest history) of the filtered data."""
    import numpy as np

    users = np.asarray(dataset.inter_feat[dataset.uid_field]).astype(np.int64)
    per_user = np.bincount(users) if len(users) else np.zeros(1, dtype=np.int64)
    return len(users), int((per_user > 0).sum()), int(per_user.max())


def _no_training_samples(config, counts):
    n_inter, n_users, longest = counts
    split = (config["eval_args"] or {}).get("split")
    sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    need = (
        "a sequential model trains on (history, next item) pairs, so with leave-one-out "
        f"(`eval_args.split`: {split}) a user needs at least 4 interactions to give one training sample"
        if sequential
        else f"`eval_args.split` ({split}) gave the training part nothing"
    )
    return (
        f"No training samples are left: {need}, and the longest history after filtering has {longest} "
        f"interaction(s) ({n_inter} interactions, {n_users} users; filters: "
        f"user_inter_num_interval {config['user_inter_num_interval']!r}, item_inter_num_interval "
        f"{config['item_inter_num_interval']!r}). Use data with longer histories, or a split that leaves "
        f"training data (e.g. --eval_args=\"{{'split': {{'RS': [0.8, 0.1, 0.1]}}}}\")."
    )


def _log_flops(model, dataset, config, logger):
    try:
        from recbole.data.transform import construct_transform
        from recbole.utils import get_flops

        flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
        logger.info(set_color("FLOPs", "blue") + f": {flops}")
    except Exception as err:  # noqa: BLE001 - FLOPs are informative only (thop may be missing)
        logger.info(f"FLOPs not computed: {err}")


# ------------------------------------------------------------------------------------- run
def run(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
):
    """Single process, or ``nproc`` spawned DDP processes (NCCL, one GPU each) running ``run_recboles``."""
    if nproc == 1 and world_size <= 0:
        return run_recbole(model, dataset, config_file_list, config_dict, saved=saved)
    if world_size == -1:
        world_size = nproc
    if not torch.cuda.is_available():
        raise TimeplugError(
            f"Multi-process training (nproc={nproc}, world_size={world_size}) uses RecBole's DDP path, which "
            f"needs CUDA GPUs (NCCL backend); this machine has none. Drop --nproc/--world_size to train on CPU."
        )
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size, "ip": ip, "port": port, "nproc": nproc, "offset": group_offset})
    kwargs = {"config_dict": config_dict, "queue": queue, "saved": saved}
    # run_recboles lives in this module, so the spawned children import recbole_timeplug (registry + compat).
    mp.spawn(run_recboles, args=(model, dataset, config_file_list, kwargs), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def run_recbole(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None, epoch_listeners=(),
    per_user=False,
):
    """Train and test a model (or, with ``checkpoint_path`` + ``test_only``, only test saved weights).

    ``epoch_listeners``: callables ``(trainer, "train" | "valid", seconds)`` told after every training epoch
    and validation pass of every training stage (e.g. to time a run; see ``benchmarks/results.py``).
    ``per_user``: also return each test user's top-k metrics under ``"test_per_user"`` (``{"user_id": [...],
    "ndcg@10": array, ...}``, see ``recbole_timeplug.evaluation``; a multi-stage model's earlier stages get
    theirs in ``result["stages"][<stage>]["test_per_user"]``). Single process only.

    Returns a dict with ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result`` and the checkpoint paths ``saved_model_file`` / ``last_model_file``.
    """
    config, payload = build_config(model, dataset, config_file_list, config_dict)
    if per_user and not config["single_spec"]:
        raise TimeplugError("run_recbole(per_user=True) needs a single process: each DDP rank tests a shard of users")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    model_class, dataset, train_data, valid_data, test_data = _prepare(config, logger)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    logger.info(model)
    if not config["test_only"]:
        _log_flops(model, dataset, config, logger)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.epoch_listeners.extend(epoch_listeners)
    checkpoint_path = config["checkpoint_path"]
    show_progress = config["show_progress"]

    if config["test_only"]:
        if not checkpoint_path:
            raise TimeplugError("`test_only: True` needs `checkpoint_path`: the checkpoint file to evaluate.")
        # evaluate the payload build_config read: the file is read once
        try:
            valid_result = trainer.evaluate(valid_data, model_file=checkpoint_path, show_progress=show_progress,
                                            checkpoint=payload)
            trainer.keep_per_user = per_user
            test_result = trainer.evaluate(test_data, model_file=checkpoint_path, show_progress=show_progress,
                                           checkpoint=payload)
        finally:
            trainer.release_checkpoint_name()  # nothing is saved: no empty <model>-<time>.pth left behind
        best_valid_score = None
        if valid_result:
            from recbole.utils import calculate_valid_score

            best_valid_score = calculate_valid_score(valid_result, config["valid_metric"].lower())
        result = _result(config, best_valid_score, valid_result, test_result, os.path.abspath(checkpoint_path), None)
        logger.info(set_color("evaluated checkpoint", "yellow") + f": {checkpoint_path}")
    else:
        if checkpoint_path:
            trainer.resume_checkpoint(checkpoint_path, checkpoint=payload)
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=show_progress
        )
        trainer.keep_per_user = per_user
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=show_progress)
        result = _result(
            config,
            best_valid_score,
            best_valid_result,
            test_result,
            trainer.saved_model_file if saved else None,
            trainer.last_model_file if saved else None,
        )
        if getattr(trainer, "stage_results", None):  # multi-stage trainers (TiMiRec): each stage's numbers
            result["stages"] = trainer.stage_results
        logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())

    if per_user:
        result["test_per_user"] = trainer.per_user_result
    logger.info(set_color("best valid ", "yellow") + f": {result['best_valid_result']}")
    logger.info(set_color("test result", "yellow") + f": {result['test_result']}")
    if result["saved_model_file"] and not config["test_only"]:
        logger.info(set_color("best checkpoint", "yellow") + f": {result['saved_model_file']}")
        logger.info(set_color("last checkpoint", "yellow") + f": {result['last_model_file']}")

    if not config["single_spec"]:
        torch.distributed.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def _result(config, best_valid_score, best_valid_result, test_result, saved_file, last_file):
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": plain_metrics(best_valid_result),
        "test_result": plain_metrics(test_result),
        "saved_model_file": saved_file,
        "last_model_file": last_file,
    }


def run_recboles(rank, *args):
    """DDP child: ``rank`` is set as ``local_rank``.  Must stay in this module (see ``run``)."""
    kwargs = args[-1]
    if not isinstance(kwargs, MutableMapping):
        raise ValueError(f"The last argument of run_recboles should be a dict, but got {type(kwargs)}")
    kwargs["config_dict"] = dict(kwargs.get("config_dict") or {})
    kwargs["config_dict"]["local_rank"] = rank
    return run_recbole(*args[:3], **kwargs)


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """Objective for ``recbole.trainer.HyperTuning`` (and the Ray Tune trainable in ``hyper.py``)."""
    config, _ = build_config(config_dict=config_dict, config_file_list=config_file_list)
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    model_class, _, train_data, valid_data, test_data = _prepare(config)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False, saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


def load_data_and_model(model_file, trust_legacy_checkpoint=False, config_dict=None):
    """Rebuild config, dataset, dataloaders and the trained model from a checkpoint file.

    The model is loaded on this machine's device (a GPU-trained checkpoint loads on a CPU box).
    ``config_dict`` overrides stored settings (e.g. ``{"data_path": ...}`` when the data moved).
    """
    payload = load_checkpoint(model_file, map_location="cpu", trust_legacy=trust_legacy_checkpoint)
    config = Config(
        model=payload["model"],
        dataset=payload["dataset"],
        config_dict=dict(config_dict or {}),
        base_config_dict=payload.get("external_config"),
    )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    model_class, dataset, train_data, valid_data, test_data = _prepare(config, logger)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    load_model_state(model, payload, config, model_file)
    return config, model, dataset, train_data, valid_data, test_data
