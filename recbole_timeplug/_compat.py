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

5. RecBole turns every ``float`` field into a float32 tensor (``Dataset._dataframe_to_interaction``).
   float32 has 24 mantissa bits: at Unix-seconds scale (1e9) its spacing is 64-128 s, at milliseconds
   (1e12) 65536-131072 ms, so the gaps time-aware models compute were off by up to a minute and 46 % of
   TiSASRec's interval buckets were wrong (measured).  The configured ``TIME_FIELD`` is kept in float64
   (its ``_list`` field in sequential datasets follows, as RecBole allocates it with the field's dtype).
6. ``Dataset._fill_nan`` uses chained ``feat[field].fillna(..., inplace=True)``: a ``FutureWarning`` per
   field on every run with pandas 2.2, and a silent no-op under pandas 3's copy-on-write (NaN flows on).
   Replaced by the same filling written as assignments.
7. ``torch.cuda.amp.GradScaler(...)`` (RecBole's trainer, every run) is deprecated: RecBole's trainer
   module gets ``torch.amp`` equivalents bound to ``"cuda"``.

8. ``Pop.calculate_loss`` counts with ``item_cnt[item] = item_cnt[item] + 1``: with an item twice in a batch the
   indexed assignment writes once, so an item's count is the number of *batches* it occurs in (at
   ``train_batch_size`` 1024 on ml-100k popular items are capped near the number of batches and the ranking is
   wrong: test NDCG@10 .0208-.0261 by seed); and with point-wise negative sampling on (RecBole's default for
   general models) the sampled negatives' rows are counted as interactions.  Counted with ``index_add_``, positives
   (label > 0) only.

``apply`` also installs this package's data checks (``recbole_timeplug.data.checks``: missing
timestamps, what each filter removed), which hook into the same ``Dataset`` methods.

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


def keep_time_field_float64():
    """Keep ``TIME_FIELD`` (and so its sequence field) float64 instead of RecBole's float32."""
    import numpy as np
    import torch
    from recbole.data.dataset import Dataset
    from recbole.utils import FeatureType

    original = Dataset._dataframe_to_interaction
    if getattr(original, "_timeplug_patched", False):
        return

    @functools.wraps(original)
    def _dataframe_to_interaction(self, data):
        inter = original(self, data)
        field = getattr(self, "time_field", None)
        if (
            field is not None
            and field in data
            and self.field2type.get(field) == FeatureType.FLOAT
            and field not in (self.config["numerical_features"] or [])
        ):
            inter.interaction[field] = torch.from_numpy(np.array(data[field].values, dtype=np.float64))
        return inter

    _dataframe_to_interaction._timeplug_patched = True
    Dataset._dataframe_to_interaction = _dataframe_to_interaction


def cow_safe_fill_nan():
    """RecBole's ``_fill_nan`` (0 for tokens, the column mean for floats, empty arrays for sequences)
    written with assignments: no chained-assignment ``FutureWarning``, and it still fills on pandas 3."""
    import numpy as np
    from recbole.data.dataset import Dataset
    from recbole.utils import FeatureType, set_color

    if getattr(Dataset._fill_nan, "_timeplug_patched", False):
        return

    def _fill_nan(self):
        self.logger.debug(set_color("Filling nan", "green"))
        for feat_name in self.feat_name_list:
            feat = getattr(self, feat_name)
            for field in feat:
                ftype = self.field2type[field]
                if ftype == FeatureType.TOKEN:
                    feat[field] = feat[field].fillna(value=0)
                elif ftype == FeatureType.FLOAT:
                    feat[field] = feat[field].fillna(value=feat[field].mean())
                else:
                    dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                    feat[field] = feat[field].apply(lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x)

    _fill_nan._timeplug_patched = True
    Dataset._fill_nan = _fill_nan


def modern_grad_scaler():
    """RecBole's trainer module uses ``torch.cuda.amp.GradScaler``/``autocast``: use ``torch.amp``'s."""
    import types

    import torch
    import recbole.trainer.trainer as recbole_trainer

    if getattr(recbole_trainer.amp, "_timeplug_patched", False):
        return
    recbole_trainer.amp = types.SimpleNamespace(
        GradScaler=functools.partial(torch.amp.GradScaler, "cuda"),
        autocast=functools.partial(torch.amp.autocast, "cuda"),
        _timeplug_patched=True,
    )


def exact_pop_counts():
    """RecBole's ``Pop`` counts an item once per batch however often it occurs there, and counts sampled negatives:
    count every occurrence of every positive."""
    import torch
    from recbole.model.general_recommender.pop import Pop

    if getattr(Pop.calculate_loss, "_timeplug_patched", False):
        return

    init = Pop.__init__

    def __init__(self, config, dataset):
        init(self, config, dataset)
        self.LABEL = config["LABEL_FIELD"]

    def calculate_loss(self, interaction):
        item = interaction[self.ITEM_ID]
        if self.LABEL in interaction:  # point-wise negative sampling adds label-0 rows: not interactions
            item = item[interaction[self.LABEL] > 0]
        self.item_cnt.index_add_(0, item, torch.ones(len(item), 1, dtype=self.item_cnt.dtype, device=item.device))
        self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1)).to(self.device)

    calculate_loss._timeplug_patched = True
    Pop.__init__, Pop.calculate_loss = __init__, calculate_loss


def apply():
    """Apply every fix once (idempotent; safe to call in spawned children and Ray workers)."""
    global _APPLIED
    if _APPLIED:
        return
    restore_numpy_aliases()
    patch_torch_load_for_recbole()
    disable_recbole_anomaly_mode()
    patch_hyperopt_exhaustive()
    keep_time_field_float64()
    cow_safe_fill_nan()
    modern_grad_scaler()
    exact_pop_counts()
    from recbole_timeplug.data import checks

    checks.install()
    _APPLIED = True
