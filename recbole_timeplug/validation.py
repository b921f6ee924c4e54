"""Config checks shared by every model: one error type, one message shape.

A model reads its hyperparameters through :class:`ConfigChecks`, which returns the value when it is valid
and otherwise raises :class:`~recbole_timeplug.errors.ModelConfigError` with a one-line message naming the
model, the key, the value and what is allowed::

    check = ConfigChecks("TiSASRec", config)
    self.time_span = check.positive_int("time_span", "the largest interval bucket k (paper: 256)")
    self.loss_type = check.loss_type(("CE", "BPR", "BCE"))

``run_recbole.py`` / ``run_hyper.py`` print such an error as that one line and exit with status 2.
Checks that do not belong to one model (the sequence length of any sequential model, the fields a model
needs) live here too, so that every model and the runners fail the same way.
"""

from recbole_timeplug.errors import ModelConfigError

__all__ = [
    "ConfigChecks",
    "ModelConfigError",
    "check_sequence_length",
    "is_number",
    "negative_sampling_on",
    "torch_compile_setting",
]


def negative_sampling_on(neg_sample_args):
    """Whether RecBole's ``train_neg_sample_args`` asks for sampled negatives."""
    if not neg_sample_args:
        return False
    if not isinstance(neg_sample_args, dict):
        return True
    return neg_sample_args.get("distribution", "uniform") not in (None, "none") and neg_sample_args.get(
        "sample_num", 1
    ) not in (0, None, "none")


def _is_int(value):
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    )


def is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float))


# losses that take no RecBole negatives: CE scores every item, SSM (ARERec) draws its own
OWN_NEGATIVE_LOSSES = ("CE", "SSM")

class ConfigChecks:
    """Typed, validated reads of one model's config keys (see the module docstring).

    Args:
        model (str): the model name used in messages (``"TiM4Rec"``).
        config: RecBole's Config (or any mapping that answers ``config[key]``, None when missing).
    """

    def __init__(self, model, config):
        self.model = model
        self.config = config

    # -------------------------------------------------------------------------------- errors
    def error(self, key, value, allowed):
        """The :class:`ModelConfigError` for ``key`` = ``value``; ``allowed`` says what would be valid."""
        if value is None:
            return ModelConfigError(
                f"{self.model}: `{key}` is missing from the config; {allowed}. The defaults live in "
                f"recbole_timeplug/properties/model/{self.model}.yaml."
            )
        return ModelConfigError(f"{self.model}: `{key}`={value!r} is invalid; {allowed}. Set e.g. --{key}=<value>.")

    def _read(self, key, default):
        value = self.config[key]
        return default if value is None else value

    # -------------------------------------------------------------------------------- checks
    def positive_int(self, key, what="", minimum=1, default=None, none_ok=False):
        """An integer >= ``minimum`` (an integral float such as 64.0 from a search space is accepted).

        ``none_ok``: ``~`` / None / 0 mean "no limit" and read as None.
        """
        value = self._read(key, default)
        if none_ok and value in (None, 0, "None", "none"):
            return None
        if not (_is_int(value) and value >= minimum):
            raise self.error(key, value, _join(f"it must be an integer >= {minimum}" + (" or ~" if none_ok else ""), what))
        return int(value)

    def probability(self, key, what="", default=None):
        """A rate in [0, 1) (dropout)."""
        value = self._read(key, default)
        if not (is_number(value) and 0.0 <= value < 1.0):
            raise self.error(key, value, _join("it must be a number in [0, 1)", what))
        return float(value)

    def number(self, key, what="", low=None, high=None, low_open=True, high_open=False, default=None):
        """A float in the interval given by ``low``/``high`` (open or closed ends; None = unbounded)."""
        value = self._read(key, default)
        ok = is_number(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise self.error(key, value, _join(f"it must be a number {_interval(low, high, low_open, high_open)}", what))
        return float(value)

    def boolean(self, key, what="", default=None):
        """True/False (YAML booleans; RecBole's command line parses ``--key=True`` to a bool)."""
        value = self._read(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.error(key, value, _join("it must be True or False", what))
        return value

    def one_of(self, key, choices, what="", default=None, normalise=None):
        """One of ``choices``; ``normalise`` (e.g. ``str.upper``) is applied to strings before comparing."""
        value = self._read(key, default)
        if normalise is not None and isinstance(value, str):
            value = normalise(value)
        if value not in choices:
            raise self.error(key, value, _join(f"use one of {', '.join(map(str, choices))}", what))
        return value

    def list_of(self, key, length, item_ok, what, default=None):
        """A list of ``length`` values, each accepted by ``item_ok``."""
        value = self._read(key, default)
        try:
            ok = len(value) == length and all(item_ok(v) for v in value)
        except TypeError:
            ok = False
        if not ok:
            raise self.error(key, value, what)
        return list(value)

    def loss_type(self, allowed, default=None):
        """``loss_type`` from ``allowed``, consistent with ``train_neg_sample_args`` (CE and SSM, whose model draws
        its own negatives: none; others: some)."""
        loss = self.one_of("loss_type", allowed, default=default, normalise=str.upper)
        neg = self.config["train_neg_sample_args"]
        if loss in OWN_NEGATIVE_LOSSES and negative_sampling_on(neg):
            raise self.error("train_neg_sample_args", neg, f"loss_type {loss} takes no RecBole negatives: set it to ~")
        if loss not in OWN_NEGATIVE_LOSSES and not negative_sampling_on(neg):
            raise self.error(
                "train_neg_sample_args",
                neg,
                f"loss_type {loss} needs sampled negatives: set {{distribution: uniform, sample_num: 1}}",
            )
        return loss

    def divides(self, key, divisor_key, value, divisor):
        """``value`` (read from ``key``) is a multiple of ``divisor`` (read from ``divisor_key``)."""
        if value % divisor:
            raise self.error(divisor_key, divisor, f"it must divide `{key}` ({value})")


def check_sequence_length(config):
    """Every sequential model needs ``MAX_ITEM_LIST_LENGTH`` >= 1 (checked before any data is loaded)."""
    return ConfigChecks(config["model"], config).positive_int(
        "MAX_ITEM_LIST_LENGTH", "the number of past items a sequential model reads (e.g. 50)"
    )


def torch_compile_setting(config):
    """The run-control key ``torch_compile`` (unset, e.g. a config built without this package's overall.yaml:
    False)."""
    return ConfigChecks(config["model"], config).boolean(
        "torch_compile", "compile the model's training step with torch.compile", default=False
    )


def _join(rule, what):
    return f"{rule} ({what})" if what else rule


def _interval(low, high, low_open, high_open):
    if low is None and high is None:
        return ""
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
