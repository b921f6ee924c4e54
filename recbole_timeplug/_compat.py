"""Compatibility fixes for RecBole 1.2.1 on today's stack, applied once at package import.

Each fix is small, idempotent and has its own test in ``tests/test_compat.py``. Each breakage,
its cause and why it is fixed here rather than pinned: ``docs/recbole_compat.md``; pins in ``setup.cfg``
avoid the rest.

1. numpy 2 removed the aliases RecBole (``np.float``, ``np.bool`` ...) and ray 2.6.3 (``np.bool8``)
   use at run time.  Restored only where missing, so numpy<2 is untouched.
2. hyperopt >= 0.2.7 calls ``rng.integers`` on the ``RandomState`` RecBole's exhaustive search hands
   it; ``RandomState`` has no such method.
3. Importing ``recbole.model.sequential_recommender`` runs ``torch.autograd.set_detect_anomaly(True)``
   (``sine.py``), which makes every training step 2-5x slower for the whole process.
4. torch >= 2.6 loads with ``weights_only=True`` by default and RecBole's checkpoints (pickled
   ``Config``, protocol 4) cannot be loaded that way.  Only calls made *from RecBole's own modules*
   that do not say ``weights_only`` get ``weights_only=False`` (e.g. S3Rec's ``pre_model_path``);
   this package always passes ``weights_only`` explicitly and gates legacy files behind
   ``trust_legacy_checkpoint`` (see ``checkpoint.py``).

``apply`` is also passed to Ray as ``worker_process_setup_hook`` so that Ray workers get the same fixes.
"""

import functools
import sys

_APPLIED = False

NUMPY_ALIASES = {
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "bool8": "bool_",
    "float": "float64",
    "int": "int_",
    "complex": "complex128",
    "object": "object_",
    "str": "str_",
    "unicode": "str_",
    "bool": "bool_",
    "long": "int_",
}


def restore_numpy_aliases():
    """Re-create numpy aliases removed in numpy 1.24 / 2.0 that RecBole and ray still use."""
    import warnings

    import numpy as np

    for alias, target in NUMPY_ALIASES.items():
        with warnings.catch_warnings():
            # numpy 1.x raises a FutureWarning/DeprecationWarning on hasattr for some aliases
            warnings.simplefilter("ignore")
            try:
                present = alias in np.__dict__ and getattr(np, alias) is not None
            except (AttributeError, FutureWarning):
                present = False
        if not present:
            setattr(np, alias, getattr(np, target))


def _make_random_state_with_integers():
    import numpy as np

    class RandomStateWithIntegers(np.random.RandomState):
        """``RandomState`` that also answers the ``Generator.integers`` call of hyperopt >= 0.2.7."""

        def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
            if high is None:
                low, high = 0, low
            if endpoint:
                high = high + 1
            return self.randint(low, high, size=size, dtype=dtype)

    return RandomStateWithIntegers


def patch_hyperopt_exhaustive():
    """Make RecBole's ``exhaustive_search`` work with hyperopt >= 0.2.7."""
    try:
        import recbole.trainer.hyper_tuning as hyper_tuning
    except ImportError:  # pragma: no cover - recbole is a hard dependency
        return
    original = hyper_tuning.exhaustive_search
    if getattr(original, "_timeplug_patched", False):
        return
    import numpy as np

    random_state_cls = _make_random_state_with_integers()

    @functools.wraps(original)
    def exhaustive_search(*args, **kwargs):
        # RecBole builds ``np.random.RandomState(seed)`` inside; hand it a subclass for this call only.
        saved = np.random.RandomState
        np.random.RandomState = random_state_cls
        try:
            return original(*args, **kwargs)
        finally:
            np.random.RandomState = saved

    exhaustive_search._timeplug_patched = True
    hyper_tuning.exhaustive_search = exhaustive_search


def disable_recbole_anomaly_mode():
    """Import RecBole's sequential models (which switch anomaly mode on) and switch it back off."""
    import torch

    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py's set_detect_anomaly(True))

    torch.autograd.set_detect_anomaly(False)


def patch_torch_load_for_recbole():
    """Default ``weights_only=False`` only for ``torch.load`` calls made from RecBole's own modules."""
    import torch

    if getattr(torch.load, "_timeplug_patched", False):
        return
    original = torch.load

    @functools.wraps(original)
    def load(*args, **kwargs):
        if "weights_only" not in kwargs:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("recbole."):
                kwargs["weights_only"] = False
        return original(*args, **kwargs)

    load._timeplug_patched = True
    load._timeplug_original = original
    torch.load = load


def apply():
    """Apply every fix once (idempotent; safe to call in spawned children and Ray workers)."""
    global _APPLIED
    if _APPLIED:
        return
    restore_numpy_aliases()
    patch_torch_load_for_recbole()
    disable_recbole_anomaly_mode()
    patch_hyperopt_exhaustive()
    _APPLIED = True
