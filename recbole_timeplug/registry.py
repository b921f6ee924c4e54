"""Name -> class resolution for plugin models and their trainers, with RecBole as the fallback.

Adding a model means: a file ``model/sequential_recommender/<name>.py`` defining class ``<Name>``,
a YAML of defaults ``properties/model/<Name>.yaml``, and one line in ``PLUGIN_MODELS`` below.
A model that needs its own trainer defines ``<Name>Trainer`` in ``recbole_timeplug.trainer``.
A model living outside the package calls :func:`register_model` (with its YAML, and its trainer if any).
"""

import importlib
import os

from recbole.utils import ModelType

from recbole_timeplug.errors import UnknownModelError

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")

# name -> "module:Class".  One line per model.
PLUGIN_MODELS = {
    "TiSASRec": "recbole_timeplug.model.sequential_recommender.tisasrec:TiSASRec",
    "TiM4Rec": "recbole_timeplug.model.sequential_recommender.tim4rec:TiM4Rec",
    "MASAN": "recbole_timeplug.model.sequential_recommender.masan:MASAN",
    "TiMiRec": "recbole_timeplug.model.sequential_recommender.timirec:TiMiRec",
    "ARERec": "recbole_timeplug.model.sequential_recommender.arerec:ARERec",
}

# name -> YAML of defaults / trainer ("module:Class" or class) for models registered from outside the package.
_EXTRA_MODEL_YAMLS = {}
_EXTRA_TRAINERS = {}

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def register_model(name, target, config_file=None, trainer=None):
    """Register a model class under ``name``.

    Args:
        name (str): the name used as ``--model=<name>``.
        target (str | type): ``"package.module:Class"`` (imported lazily) or the class itself.
        config_file (str, optional): YAML of defaults for models that live outside this package;
            models inside the package use ``properties/model/<name>.yaml``.
        trainer (str | type, optional): the model's own trainer (``"module:Class"`` or the class), for
            models outside the package; it should subclass ``recbole_timeplug.trainer.Trainer`` so that
            its checkpoints are safe and exact.  Default: ``<name>Trainer`` in ``recbole_timeplug.trainer``
            if there is one, else RecBole's.
    """
    if not isinstance(target, str):
        target = f"{target.__module__}:{target.__qualname__}"
    PLUGIN_MODELS[name] = target
    if config_file is not None:
        _EXTRA_MODEL_YAMLS[name] = os.path.abspath(config_file)
    if trainer is not None:
        _EXTRA_TRAINERS[name] = trainer


def model_config_files(name, dataset):
    """The plugin YAMLs for ``name`` on ``dataset``, least specific first (existing files only).

    ``<Model>.yaml`` (next to the package's ``properties/model/`` or the file given to
    :func:`register_model`), the package's ``properties/dataset/<dataset>.yaml``, then
    ``<Model>/<dataset>.yaml`` beside the model YAML.
    """
    model_yaml = _EXTRA_MODEL_YAMLS.get(name, os.path.join(PROPERTIES_DIR, "model", f"{name}.yaml"))
    candidates = [
        os.path.join(PROPERTIES_DIR, "overall.yaml"),
        model_yaml,
        os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml"),
        os.path.join(os.path.dirname(model_yaml), name, f"{dataset}.yaml"),
    ]
    return [path for path in candidates if os.path.isfile(path)]


def _import_target(target):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def recbole_model_names():
    """Names of RecBole's built-in models (scanned from its model packages, without importing them)."""
    import pkgutil

    import recbole.model as rm

    names = []
    for sub in _RECBOLE_SUBMODULES:
        if sub == "exlib_recommender":  # needs lightgbm/xgboost; listed separately if importable
            continue
        try:
            pkg = importlib.import_module(f"recbole.model.{sub}")
        except ImportError:  # pragma: no cover
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            for attr in dir(pkg):
                if attr.lower() == info.name:
                    names.append(attr)
                    break
    del rm
    return sorted(set(names))


def available_models():
    """(plugin model names, RecBole model names)."""
    return sorted(PLUGIN_MODELS), recbole_model_names()


def _unknown_model(name):
    plugin, builtin = available_models()
    close = [m for m in plugin + builtin if m.lower() == str(name).lower()]
    hint = f" Did you mean {close[0]!r}? Model names are case-sensitive." if close else ""
    return UnknownModelError(
        f"Unknown model {name!r} (from the `model` key / --model).{hint}\n"
        f"  recbole-timeplug models: {', '.join(plugin) if plugin else '(none registered)'}\n"
        f"  RecBole built-in models: {', '.join(builtin)}"
    )


def get_model(model_name):
    """The model class for ``model_name``: plugin models first, then RecBole's built-in models.

    Unlike ``recbole.utils.get_model`` (which fails with "No module named 'lightgbm'" for any unknown
    name) an unknown name raises :class:`UnknownModelError` listing the available models.
    """
    if not isinstance(model_name, str):
        return model_name
    if model_name in PLUGIN_MODELS:
        return _import_target(PLUGIN_MODELS[model_name])
    file_name = model_name.lower()
    for sub in _RECBOLE_SUBMODULES:
        module_path = f"recbole.model.{sub}.{file_name}"
        try:
            found = importlib.util.find_spec(module_path) is not None
        except ImportError:  # probing exlib_recommender imports lightgbm/xgboost
            found = False
        if found:
            module = importlib.import_module(module_path)
            if hasattr(module, model_name):
                return getattr(module, model_name)
            break
    raise _unknown_model(model_name)


def get_trainer(model_type, model_name):
    """The trainer class: the one given to :func:`register_model`, else ``<Model>Trainer`` from this
    package, else RecBole's, made checkpoint-safe.

    Every trainer returned has this package's safe, exact checkpoints (``trainer.CheckpointMixin``),
    RecBole's built-in trainers included.
    """
    from recbole_timeplug import trainer as plugin_trainer

    own = _EXTRA_TRAINERS.get(model_name)
    if isinstance(own, str):
        own = _import_target(own)
    if own is not None:
        return plugin_trainer.safe_trainer(own)
    own = getattr(plugin_trainer, f"{model_name}Trainer", None)
    if own is not None:
        return own
    recbole_trainer = importlib.import_module("recbole.trainer")
    base = getattr(recbole_trainer, f"{model_name}Trainer", None)
    if base is None:
        if model_type == ModelType.KNOWLEDGE:
            base = recbole_trainer.KGTrainer
        elif model_type == ModelType.TRADITIONAL:
            base = recbole_trainer.TraditionalTrainer
        else:
            base = recbole_trainer.Trainer
    return plugin_trainer.safe_trainer(base)
