"""Raw-data tools: converters from the seed papers' raw formats to RecBole atomic files.

    python -m recbole_timeplug.data.convert <format> <raw path> <out dir> [--dataset NAME]

See ``recbole_timeplug.data.convert`` and ``dataset/README.md``. The names below are imported lazily so
that ``python -m recbole_timeplug.data.convert`` does not import the module twice.
"""

# (`convert` itself is the submodule: use `from recbole_timeplug.data.convert import convert`.)
__all__ = ["FORMATS", "ConvertError", "parse_time"]


def __getattr__(name):
    if name in __all__:
        from recbole_timeplug.data import convert as _convert

        return getattr(_convert, name)
    raise AttributeError(f"module 'recbole_timeplug.data' has no attribute {name!r}")
