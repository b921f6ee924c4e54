"""recbole-timeplug: time- and interest-aware sequential recommenders as a RecBole plugin.

Importing the package applies the compatibility fixes for RecBole 1.2.1 on today's stack once
(``_compat.apply``) and exposes the registry and the quick-start API.
"""

from recbole_timeplug import _compat

_compat.apply()

from recbole_timeplug.config import Config  # noqa: E402
from recbole_timeplug.registry import (  # noqa: E402
    PLUGIN_MODELS,
    available_models,
    get_model,
    get_trainer,
    register_model,
)

__version__ = "0.1.0"

__all__ = [
    "Config",
    "PLUGIN_MODELS",
    "available_models",
    "get_model",
    "get_trainer",
    "register_model",
    "run",
    "run_recbole",
    "objective_function",
    "load_data_and_model",
]


def __getattr__(name):  # quick-start functions imported lazily (they pull in RecBole's data stack)
    if name in ("run", "run_recbole", "run_recboles", "objective_function", "load_data_and_model"):
        from recbole_timeplug import quick_start

        return getattr(quick_start, name)
    raise AttributeError(f"module 'recbole_timeplug' has no attribute {name!r}")
