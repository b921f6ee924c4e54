"""Exceptions raised by recbole-timeplug.  Every message names the field/key/file at fault and what to do."""


class TimeplugError(Exception):
    """Base class for errors raised by this package."""


class UnknownModelError(TimeplugError, ValueError):
    """A model name resolves neither to a plugin model nor to a RecBole model."""


class DatasetNotFoundError(TimeplugError, FileNotFoundError):
    """The dataset's atomic files are not where the config says."""


class MissingFieldError(TimeplugError, ValueError):
    """A model needs a field (e.g. ``timestamp``) that the config does not load."""


class ModelConfigError(TimeplugError, ValueError):
    """A model's config value is missing or invalid (raised by ``validation.ConfigChecks``)."""


class CheckpointError(TimeplugError, RuntimeError):
    """A checkpoint cannot be used: unreadable, legacy and untrusted, another model, or incompatible."""


class DataError(TimeplugError, ValueError):
    """The data cannot be trained on as configured: missing timestamps, nothing left after filtering."""
