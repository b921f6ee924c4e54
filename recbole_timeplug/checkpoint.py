"""Safe, exact checkpoints.

A checkpoint written here holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)`` and loading never runs code from the file (README, *Checkpoint safety*):

=====================  ====================================================================
``format``             ``"recbole_timeplug"`` and ``format_version``
``model``/``dataset``  names (str)
``config``             the final configuration, as a dict of primitives (for diffs and reports)
``external_config``    what the user set (files, dict, command line): rebuilds the run's Config
``epoch``              last finished epoch; ``best_epoch``, ``best_valid_score``,
                       ``best_valid_result``, ``cur_step`` (early-stopping counter),
                       ``train_loss_dict`` and ``valid_score_dict`` (epoch -> training loss /
                       validation score: the learning curve so far)
``state_dict``         model weights; ``other_parameter``: the model's non-parameter state
``optimizer``          optimizer state
``rng``                python / numpy / torch / cuda RNG and the train DataLoader generator, as
                       tensors, so a resumed run continues exactly where it stopped (decision 4)
``best_model_file``    the best-so-far checkpoint of the same run (in ``-last`` files)
=====================  ====================================================================

Legacy RecBole checkpoints (a pickled ``Config``) need full unpickling and are refused unless the
user sets ``trust_legacy_checkpoint: True``.
"""

import enum
import os
import pickle
import random
import zipfile

import numpy as np
import torch

from recbole_timeplug.errors import CheckpointError

FORMAT = "recbole_timeplug"
FORMAT_VERSION = 1
TRUST_KEY = "trust_legacy_checkpoint"

# External keys that describe *how* a run was launched, not *what* it computes: never carried from a
# checkpoint into the run that loads it.
LAUNCH_KEYS = frozenset(
    {
        "checkpoint_path",
        "test_only",
        TRUST_KEY,
        "local_rank",
        "world_size",
        "nproc",
        "ip",
        "port",
        "offset",
        "group_offset",
        "config_files",
    }
)


def to_plain(value):
    """Convert config values to primitives that ``weights_only`` unpickling accepts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_plain(v) for v in value), key=repr)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return repr(value)


def plain_config(config):
    """The final configuration of a RecBole ``Config`` as a dict of primitives."""
    return to_plain(dict(config.final_config_dict))


def plain_external_config(config):
    """The user-set part of a ``Config`` (files + dict + command line), minus launch-only keys."""
    external = getattr(config, "external_config_dict", {}) or {}
    return {k: to_plain(v) for k, v in external.items() if k not in LAUNCH_KEYS}


# ----------------------------------------------------------------------------------------- RNG state
def capture_rng_state(generator=None):
    """Python, numpy, torch (and CUDA) RNG states plus an optional ``torch.Generator``, as tensors."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python_version": int(py_version),
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached_gaussian": float(np_cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state, generator=None):
    """Inverse of :func:`capture_rng_state` (the state may have been loaded onto a GPU: RNG states live on the CPU)."""
    state = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    random.setstate(
        (state["python_version"], tuple(int(x) for x in state["python"].tolist()), state["python_gauss"])
    )
    np.random.set_state(
        (
            state["numpy_name"],
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"].cpu())


# ------------------------------------------------------------------------------------- save / load
def save_checkpoint(payload, path):
    """Write ``payload`` atomically (temp file + rename) so an interrupted save never leaves half a file."""
    payload = dict(payload)
    payload["format"] = FORMAT
    payload["format_version"] = FORMAT_VERSION
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


_EXPECTED = (
    "a dict with `config` (RecBole's Config, or a dict of settings) and `state_dict` (parameter name -> "
    "tensor), as RecBole's trainer writes, or a recbole-timeplug checkpoint"
)


def _legacy_to_payload(raw, path):
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"Checkpoint file {path!r} holds a {type(raw).__name__}, not a checkpoint: expected {_EXPECTED}. "
            f"Point `checkpoint_path` at a .pth file written by a training run."
        )
    config = raw.get("config")
    state_dict = raw.get("state_dict")
    if config is None or state_dict is None:
        raise CheckpointError(
            f"Checkpoint file {path!r} is not a RecBole or recbole-timeplug checkpoint "
            f"(it holds keys {sorted(map(str, raw))}; expected {_EXPECTED}). "
            f"Point `checkpoint_path` at a .pth file written by a training run."
        )
    final = getattr(config, "final_config_dict", config)
    if not isinstance(final, dict) or not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise CheckpointError(
            f"Checkpoint file {path!r} is not in RecBole's format: its `config` is a {type(config).__name__} "
            f"and its `state_dict` a {type(state_dict).__name__}; expected {_EXPECTED}."
        )
    external = getattr(config, "external_config_dict", None)
    epoch = int(raw.get("epoch", -1))
    return {
        "format": "recbole-legacy",
        "model": str(final.get("model")),
        "dataset": str(final.get("dataset")),
        "config": to_plain(dict(final)),
        "external_config": {k: to_plain(v) for k, v in (external or {}).items() if k not in LAUNCH_KEYS},
        "epoch": epoch,
        "best_epoch": epoch,  # RecBole writes best-so-far checkpoints only
        "cur_step": int(raw.get("cur_step", 0)),
        "best_valid_score": raw.get("best_valid_score"),
        "best_valid_result": None,
        "state_dict": raw["state_dict"],
        "other_parameter": raw.get("other_parameter"),
        "optimizer": raw.get("optimizer"),
    }


def load_checkpoint(path, map_location="cpu", trust_legacy=False):
    """Load a checkpoint safely.

    A file written by this package loads with ``weights_only=True``.  A legacy RecBole checkpoint
    (pickled objects) loads only with ``trust_legacy=True`` and is converted to the same layout.

    Raises:
        CheckpointError: missing/unreadable file, or an untrusted legacy checkpoint.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"Checkpoint file {path!r} (from `checkpoint_path`) does not exist. "
            f"Check the path; training runs print the path of the checkpoints they save."
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"Checkpoint file {path!r} (from `checkpoint_path`) is unreadable: it is not a PyTorch "
            f"checkpoint (not a zip archive written by torch.save; it may be truncated or another file)."
        )
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_legacy:
            raise CheckpointError(
                f"Checkpoint file {path!r} was not written by recbole-timeplug: it contains pickled Python "
                f"objects (as RecBole's own checkpoints do), and loading it can run code stored in the file. "
                f"If you trust this file, set `{TRUST_KEY}: True` (command line: --{TRUST_KEY}=True). "
                f"[{str(err).splitlines()[0]}]"
            ) from None
        try:
            raw = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err2:  # noqa: BLE001 - report whatever torch says
            raise CheckpointError(f"Checkpoint file {path!r} is unreadable: {err2}") from err2
        return _legacy_to_payload(raw, path)
    except Exception as err:  # noqa: BLE001 - corrupt archive, wrong format, ...
        raise CheckpointError(f"Checkpoint file {path!r} is unreadable: {err}") from err
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"Checkpoint file {path!r} holds a {type(raw).__name__}, not a checkpoint: expected {_EXPECTED}."
        )
    if raw.get("format") != FORMAT:
        return _legacy_to_payload(raw, path)
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint file {path!r} has format version {raw['format_version']}, newer than this "
            f"recbole-timeplug understands ({FORMAT_VERSION}); upgrade the package."
        )
    return raw


def config_differences(stored, current, keys=None):
    """``[(key, stored, current)]`` for keys whose values differ (launch-only keys ignored)."""
    ignored = LAUNCH_KEYS | {"device", "gpu_id", "use_gpu", "epochs", "state", "show_progress"}
    keys = keys if keys is not None else sorted(set(stored) | set(current))
    diffs = []
    for key in keys:
        if key in ignored:
            continue
        a, b = stored.get(key, "<unset>"), current.get(key, "<unset>")
        if to_plain(a) != to_plain(b):
            diffs.append((key, a, b))
    return diffs


def check_checkpoint_model(payload, config, path):
    """Raise if the checkpoint was written for another model or dataset than ``config`` names."""
    if payload["model"] != config["model"]:
        raise CheckpointError(
            f"Checkpoint file {path!r} holds a {payload['model']!r} model, but this run's `model` is "
            f"{config['model']!r}. Use --model={payload['model']} or a checkpoint of {config['model']}."
        )
    if payload.get("dataset") not in (None, "None", config["dataset"]):
        raise CheckpointError(
            f"Checkpoint file {path!r} was trained on dataset {payload['dataset']!r}, but this run's "
            f"`dataset` is {config['dataset']!r}: item/user ids would not match."
        )


def load_model_state(model, payload, config, path):
    """Load weights into ``model``; a shape/key mismatch names the config keys that differ."""
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        diffs = config_differences(payload.get("config", {}), to_plain(dict(config.final_config_dict)))
        listed = "\n".join(f"  {k}: checkpoint {a!r}, this run {b!r}" for k, a, b in diffs[:20])
        raise CheckpointError(
            f"Checkpoint file {path!r} does not fit this run's {config['model']} model: the weights have "
            f"other names or shapes ({str(err).splitlines()[0]} ...).\n"
            + (f"Config keys that differ:\n{listed}\n" if listed else "")
            + "Run with the configuration the checkpoint was trained with."
        ) from None
    other = payload.get("other_parameter")
    if other is not None:
        model.load_other_parameter(other)
