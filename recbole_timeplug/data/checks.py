"""Data checks hooked into RecBole's ``Dataset`` (installed once by ``_compat.apply``).

* **Missing timestamps.** RecBole fills a missing ``float`` with the column mean, which moves the
  interaction to a wrong place in time (and, under pandas 3, leaves NaN).  Before any filtering, the
  interactions without a ``TIME_FIELD`` value are counted and ``missing_timestamp`` decides:

  - ``refuse`` (default for models that need the time field): stop with a :class:`DataError` naming the
    count, the first lines and the switch;
  - ``drop``: drop them and log how many were dropped (filters such as k-core then see the rest);
  - ``fill``: RecBole's mean filling, with a warning (default for the other models, for which the time
    only orders the history).

* **Raw time for time-aware models.** RecBole's ``ml-100k.yaml`` sets ``normalize_all: True``, which
  min-max scales ``timestamp`` to [0, 1]: gaps lose their unit (``time_scale: none`` with ``time_unit:
  86400`` gave all-zero intervals) and 9 % of TiSASRec's ``user_min_history`` buckets changed by
  rounding (measured on ml-100k: 3.33 M of 37.2 M real pairs, 20,000 samples at L=50).  For models that need ``TIME_FIELD`` it is
  kept raw under ``normalize_all`` (``normalize_field`` naming it explicitly still normalizes it).
* **Text in a float column** (dates as timestamps): a :class:`DataError` pointing to the converter.
* **What each filter removed.** The interaction count before and after each of RecBole's filters is
  recorded in ``dataset.filter_log`` so that an empty dataset can be explained
  (:func:`empty_data_message`).
"""

import functools
import os

from recbole_timeplug.errors import DataError

MISSING_TIMESTAMP_CHOICES = ("refuse", "drop", "fill")

# RecBole filter method -> (what it does, the config keys that drive it)
FILTERS = {
    "_filter_nan_user_or_item": ("dropping interactions without a user or item id", ()),
    "_remove_duplication": ("removing duplicate interactions", ("rm_dup_inter",)),
    "_filter_by_field_value": ("filtering by field value", ("val_interval",)),
    "_filter_by_inter_num": (
        "filtering users and items by interaction count",
        ("user_inter_num_interval", "item_inter_num_interval"),
    ),
    "_filter_inter_by_user_or_item": (
        "keeping interactions of users/items present in the .user/.item files",
        ("filter_inter_by_user_or_item",),
    ),
}


def missing_timestamp_policy(config):
    """``config['missing_timestamp']``, or its default: ``refuse`` for models that need the time field."""
    value = config["missing_timestamp"] if "missing_timestamp" in config else None
    if value in (None, "None", "auto"):
        from recbole_timeplug.registry import get_model

        try:
            needs = getattr(get_model(config["model"]), "needs_fields", ())
        except Exception:  # noqa: BLE001 - an unknown model fails elsewhere with its own message
            needs = ()
        return "refuse" if "TIME_FIELD" in needs else "fill"
    if value not in MISSING_TIMESTAMP_CHOICES:
        raise DataError(
            f"`missing_timestamp` is {value!r}; choose one of {', '.join(MISSING_TIMESTAMP_CHOICES)} "
            f"(or leave it unset: refuse for time-aware models, fill otherwise)."
        )
    return value


def _inter_path(dataset):
    config = dataset.config
    return os.path.join(config["data_path"], f"{config['dataset']}.inter")


def handle_missing_timestamps(dataset):
    """Apply ``missing_timestamp`` to the freshly loaded ``inter_feat`` (a DataFrame)."""
    feat = dataset.inter_feat
    field = getattr(dataset, "time_field", None)
    if feat is None or field is None or field not in feat:
        return
    missing = feat[field].isna()
    count = int(missing.sum())
    if count == 0:
        return
    policy = missing_timestamp_policy(dataset.config)
    total = len(feat)
    where = _inter_path(dataset)
    lines = [int(i) + 2 for i in feat.index[missing][:5]]  # +2: header line, 1-based (as RecBole reports)
    benchmark = dataset.benchmark_filename_list is not None
    if policy == "refuse":
        raise DataError(
            f"{count} of {total} interactions in {where} have no `{field}` (config key `TIME_FIELD`; "
            f"first at lines {lines}): model {dataset.config['model']} needs the time of every interaction, "
            f"and RecBole would fill them with the column mean, moving them to a wrong place in time. "
            f"Fix the file, or set `missing_timestamp: drop` (--missing_timestamp=drop) to drop them."
        )
    if policy == "drop":
        if benchmark:  # keep the per-file sizes RecBole splits by in step with the rows
            sizes, start = [], 0
            for size in dataset.file_size_list:
                sizes.append(size - int(missing.iloc[start : start + size].sum()))
                start += size
            dataset.file_size_list = sizes
        dataset.inter_feat = feat[~missing].reset_index(drop=True)
        dataset.logger.warning(
            f"missing_timestamp: drop - dropped {count} of {total} interactions without `{field}` "
            f"from {where} (first at lines {lines})."
        )
        return
    dataset.logger.warning(
        f"{count} of {total} interactions in {where} have no `{field}`; missing_timestamp: fill - filled "
        f"with the column mean (RecBole's behaviour). Set `missing_timestamp: drop` to drop them instead."
    )


def _needs_time(config):
    from recbole_timeplug.registry import get_model

    try:
        return "TIME_FIELD" in getattr(get_model(config["model"]), "needs_fields", ())
    except Exception:  # noqa: BLE001 - an unknown model fails elsewhere with its own message
        return False


def _raw_time_for_time_aware_models(original):
    @functools.wraps(original)
    def _normalize(self):
        field = getattr(self, "time_field", None)
        if not (self.config["normalize_all"] and not self.config["normalize_field"] and field in self.inter_feat
                and _needs_time(self.config)):
            return original(self)
        raw = self.inter_feat[field].copy()
        original(self)
        self.inter_feat[field] = raw
        self.logger.info(f"normalize_all: `{field}` kept in its own units ({self.config['model']} computes time gaps).")

    _normalize._timeplug_patched = True
    return _normalize


def _text_in_float_column(original):
    """``pandas.read_csv(dtype=float)`` on dates ("2020-01-01") fails deep in pandas: say what to do."""

    @functools.wraps(original)
    def _load_feat(self, filepath, source):
        try:
            return original(self, filepath, source)
        except ValueError as err:
            text = f"{err} ({err.__cause__})" if err.__cause__ else str(err)
            if "could not convert string to float" not in text and "Unable to convert column" not in text:
                raise
            raise DataError(
                f"{filepath}: a column typed `:float` holds text ({text}). Times must be numbers (Unix seconds): "
                f"convert dates with `python -m recbole_timeplug.data.convert csv ... --time-format iso` (or "
                f"\"%Y-%m-%d\"; see dataset/README.md), or type a column that is not a number `:token`."
            ) from None

    _load_feat._timeplug_patched = True
    return _load_feat


def _record(name):
    def wrap(original):
        @functools.wraps(original)
        def method(self, *args, **kwargs):
            before = len(self.inter_feat)
            result = original(self, *args, **kwargs)
            self.filter_log.append((name, before, len(self.inter_feat)))
            return result

        method._timeplug_patched = True
        return method

    return wrap


def install():
    """Hook the checks into ``recbole.data.dataset.Dataset`` (idempotent)."""
    from recbole.data.dataset import Dataset

    if getattr(Dataset._data_processing, "_timeplug_patched", False):
        return
    original = Dataset._data_processing

    @functools.wraps(original)
    def _data_processing(self):
        self.filter_log = [("loaded", None, 0 if self.inter_feat is None else len(self.inter_feat))]
        handle_missing_timestamps(self)
        if self.filter_log[0][2] != len(self.inter_feat):
            self.filter_log.append(("missing_timestamp: drop", self.filter_log[0][2], len(self.inter_feat)))
        if len(self.inter_feat) == 0:
            raise DataError(empty_data_message(self))
        try:
            return original(self)
        except ValueError as err:  # RecBole's _reset_index: "Some feat is empty, please check the filtering settings."
            if "Some feat is empty" not in str(err) or len(self.inter_feat) > 0:
                raise
            raise DataError(empty_data_message(self)) from None

    _data_processing._timeplug_patched = True
    Dataset._data_processing = _data_processing
    Dataset._load_feat = _text_in_float_column(Dataset._load_feat)
    Dataset._normalize = _raw_time_for_time_aware_models(Dataset._normalize)
    for name in FILTERS:
        setattr(Dataset, name, _record(name)(getattr(Dataset, name)))


def empty_data_message(dataset, what="no interactions are left"):
    """Which step left nothing (from ``dataset.filter_log``), with the config keys to change."""
    config = dataset.config
    log = getattr(dataset, "filter_log", [])
    where = _inter_path(dataset)
    culprit = None
    for name, before, after in log:
        if after == 0 and (before is None or before > 0):
            culprit = name
            break
        if after == 0:
            break
    if culprit == "loaded":
        return f"{where} holds no interactions: {what}."
    if culprit == "missing_timestamp: drop":
        return f"Every interaction in {where} lacks the time field and missing_timestamp: drop dropped them all: {what}."
    if culprit in FILTERS:
        text, keys = FILTERS[culprit]
        before = next(b for n, b, a in log if n == culprit)
        settings = ", ".join(f"{k}: {config[k]!r}" for k in keys if k in config) or "no setting"
        return (
            f"{text} ({settings}) removed all {before} remaining interactions of {where}: {what}. "
            f"Relax {' / '.join(keys) or 'the data'} (e.g. --user_inter_num_interval=\"[1,inf)\"), or use more data."
        )
    counts = " -> ".join(f"{n.lstrip('_')}: {a}" for n, b, a in log)
    return f"{where}: {what} (interactions after each step: {counts})."
