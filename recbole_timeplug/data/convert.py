"""Convert the raw files of the seed papers' datasets into RecBole atomic ``.inter`` files.

    python -m recbole_timeplug.data.convert <format> <raw path> <out dir> [--dataset NAME] [options]

writes ``<out dir>/<NAME>.inter`` (``NAME`` defaults to the name of ``<out dir>``, so
``... ratings.dat dataset/ml-1m`` gives ``dataset/ml-1m/ml-1m.inter``, ready for ``--dataset=ml-1m``) with
the columns ``user_id:token  item_id:token  [rating:float]  timestamp:float`` (timestamps in Unix seconds,
stored as float as the time-aware models need).

Formats (``<raw path>`` may be a file, a quoted glob such as ``"data/log_standard_*.csv"``, or a folder for
``kuairand``; ``.gz`` files are read as gzip):

=============  ==========================================================================================
movielens      ML-1M/ML-10M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) or ML-20M/25M/32M
               ``ratings.csv`` (header ``userId,movieId,rating,timestamp``)
amazon-csv     Amazon "ratings only" CSV, no header: ``user,item,rating,timestamp``
amazon-json    Amazon reviews (5-core) JSON lines: strict JSON (2018) or the Python-literal lines of the
               2014 files (parsed with ``ast.literal_eval``); fields ``reviewerID, asin, overall,
               unixReviewTime`` (``reviewTime`` "MM DD, YYYY" when the Unix time is missing)
steam          Steam reviews (Kang & McAuley, ``steam_reviews.json.gz``): Python-literal lines; user
               ``username`` (``--user-field user_id`` for the numeric id, which many rows lack), item
               ``product_id``, time ``date`` (YYYY-MM-DD, midnight UTC)
kuairand       KuaiRand log CSVs (header with ``user_id, video_id, time_ms``); ``--click-only`` keeps
               rows with ``is_click == 1``; time = ``time_ms / 1000``
csv            any delimited file: ``--user-col --item-col --time-col [--rating-col] [--time-format]
               [--sep] [--no-header]``
json           any JSON-lines file (e.g. Yelp's ``yelp_academic_dataset_review.json``):
               ``--user-field --item-field --time-field [--rating-field] [--time-format]``
=============  ==========================================================================================

Every input line is accounted for: written, skipped by a filter you asked for (``--click-only``), or
rejected (unparsable, missing field, bad timestamp, ...). Rejected lines are counted by reason, the first
few line numbers are printed, and ``--rejected`` also writes them to ``<out dir>/<NAME>.rejected``
(``file:line <TAB> reason <TAB> raw line``). A header without a needed column, or a first record without
a needed field, stops the conversion with an error naming the file, the column and what was found.
Lines are streamed (constant memory apart from the user/item sets of the summary) with a progress bar
(``--quiet`` turns it off).
"""

import argparse
import ast
import csv
import datetime
import glob
import gzip
import json
import math
import os
import sys
from collections import Counter

from recbole_timeplug.errors import TimeplugError

FORMATS = ("movielens", "amazon-csv", "amazon-json", "steam", "kuairand", "csv", "json")
MAX_EXAMPLES = 5  # rejected line numbers shown in the summary


class ConvertError(TimeplugError, ValueError):
    """The raw input cannot be converted (missing column/field, no such file, nothing written)."""


class RowError(Exception):
    """One line cannot be used; the message is the rejection reason."""


# ------------------------------------------------------------------------------------ time parsing
def parse_time(value, time_format="s"):
    """Unix seconds (float) from ``value``.

    ``time_format``: ``s`` (number of seconds), ``ms`` (milliseconds), ``iso`` (ISO 8601 date or
    datetime; naive values are UTC) or a ``strptime`` pattern such as ``%Y-%m-%d %H:%M:%S`` (UTC).
    """
    if value is None:
        raise RowError("empty timestamp")
    if isinstance(value, bool):
        raise RowError(f"timestamp is a boolean ({value!r})")
    text = value.strip() if isinstance(value, str) else value
    if text == "":
        raise RowError("empty timestamp")
    if time_format in ("s", "ms"):
        try:
            t = float(text)
        except (TypeError, ValueError):
            raise RowError(f"timestamp {value!r} is not a number") from None
        if time_format == "ms":
            t /= 1000.0
    else:
        try:
            if time_format == "iso":
                dt = datetime.datetime.fromisoformat(str(text))
            else:
                dt = datetime.datetime.strptime(str(text), time_format)
        except ValueError:
            raise RowError(f"timestamp {value!r} does not match format {time_format!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=datetime.timezone.utc)
        t = dt.timestamp()
    if not math.isfinite(t):
        raise RowError(f"timestamp {value!r} is not finite")
    return t


def _rating(value):
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise RowError(f"rating {value!r} is not a number") from None
    if not math.isfinite(r):
        raise RowError(f"rating {value!r} is not finite")
    return r


def _token(value, what):
    if value is None:
        raise RowError(f"empty {what}")
    text = str(value).strip()
    if not text:
        raise RowError(f"empty {what}")
    if "\t" in text or "\n" in text or "\r" in text:
        raise RowError(f"{what} {text[:40]!r} contains a tab or newline")
    return text


def _fmt_float(x):
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


# ------------------------------------------------------------------------------------ formats
class _Format:
    """Turns the text of one line into ``(user, item, rating or None, unix seconds)``.

    ``start_file`` is called with each file's first non-empty line and returns True when that line is a
    header (consumed) and False when it is data. ``row`` raises ``RowError`` (rejected) or returns None
    (skipped by a user-requested filter; ``filter_reason`` says which).
    """

    has_rating = False
    filter_reason = None

    def start_file(self, path, first_line):
        return False

    def row(self, text):  # pragma: no cover - abstract
        raise NotImplementedError


def _split(text, sep):
    if '"' in text:
        return next(csv.reader([text], delimiter=sep))
    return text.split(sep)


def _header_index(path, header, needed, what):
    """Column positions of ``needed`` (name -> role) in ``header``; a clear error when one is missing."""
    names = [h.strip().strip('"').lstrip("\ufeff") for h in header]
    index = {}
    for name, role in needed.items():
        if name not in names:
            raise ConvertError(
                f"{path}: the {what} header has no column {name!r} (needed for the {role}); "
                f"found columns {names}. Check the file, or name the column with the matching option."
            )
        index[role] = names.index(name)
    return index


class MovieLens(_Format):
    def __init__(self, opts):
        self.mode = None  # "dat" or "csv"
        self.has_rating = not opts.no_rating

    def start_file(self, path, first_line):
        if "::" in first_line:
            self.mode, self.sep, self.width = "dat", "::", 4
            self.index = {"user": 0, "item": 1, "rating": 2, "time": 3}
            return False
        self.mode, self.sep = "csv", ","
        header = first_line.split(",")
        self.index = _header_index(
            path, header, {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "time"},
            "MovieLens ratings.csv",
        )
        self.width = len(header)
        return True

    def row(self, text):
        parts = text.split(self.sep) if self.mode == "dat" else _split(text, ",")
        if len(parts) != self.width:
            raise RowError(f"expected {self.width} fields separated by {self.sep!r}, found {len(parts)}")
        i = self.index
        rating = _rating(parts[i["rating"]]) if self.has_rating else None
        return (_token(parts[i["user"]], "user id"), _token(parts[i["item"]], "item id"), rating,
                parse_time(parts[i["time"]]))


class AmazonCSV(_Format):
    HEADER_WORDS = {"timestamp", "unixreviewtime", "overall", "rating", "asin", "reviewerid", "user", "item"}

    def __init__(self, opts):
        self.has_rating = not opts.no_rating

    def start_file(self, path, first_line):
        parts = _split(first_line, ",")
        if len(parts) != 4:
            raise ConvertError(
                f"{path}: Amazon ratings CSV needs 4 comma-separated columns (user,item,rating,timestamp); "
                f"the first line has {len(parts)}: {first_line[:120]!r}"
            )
        words = {p.strip().strip('"').lower() for p in parts}
        return len(words & self.HEADER_WORDS) >= 2  # an added header line (the originals have none)

    def row(self, text):
        parts = _split(text, ",")
        if len(parts) != 4:
            raise RowError(f"expected 4 fields (user,item,rating,timestamp), found {len(parts)}")
        rating = _rating(parts[2]) if self.has_rating else None
        return (_token(parts[0], "user id"), _token(parts[1], "item id"), rating, parse_time(parts[3]))


class _JsonLines(_Format):
    """JSON objects one per line, strict JSON or Python literals (``ast.literal_eval``, never ``eval``)."""

    def __init__(self, opts, user, item, time, rating=None):
        self.user = opts.user_field or user
        self.item = opts.item_field or item
        self.time = opts.time_field or time
        self.rating = None if opts.no_rating else (opts.rating_field or rating)
        self.has_rating = self.rating is not None
        self.literal_first = False
        self.checked = False

    def _parse(self, text):
        first, second = (self._literal, self._json) if self.literal_first else (self._json, self._literal)
        try:
            record = first(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            try:
                record = second(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                raise RowError("neither valid JSON nor a Python literal") from None
            self.literal_first = not self.literal_first  # the file is probably in the other format
        if not isinstance(record, dict):
            raise RowError(f"a line must hold one object, found {type(record).__name__}")
        return record

    @staticmethod
    def _json(text):
        return json.loads(text)

    @staticmethod
    def _literal(text):
        return ast.literal_eval(text)

    def start_file(self, path, first_line):
        self.path = path
        self.checked = False
        self.literal_first = not first_line.lstrip().startswith('{"')
        return False

    def row(self, text):
        """One record -> (user, item, rating, time) from the configured field names."""
        record = self._parse(text)
        fields = {self.user: "user", self.item: "item", self.time: "time"}
        if self.rating:
            fields[self.rating] = "rating"
        self._check_first(record, fields)
        user = _token(self._get(record, self.user, "user"), "user id")
        item = _token(self._get(record, self.item, "item"), "item id")
        rating = _rating(self._get(record, self.rating, "rating")) if self.rating else None
        return user, item, rating, parse_time(self._get(record, self.time, "time"), self.time_format)

    def _check_first(self, record, fields):
        """The first record of a file must have every needed field: otherwise the field names are wrong."""
        if self.checked:
            return
        self.checked = True
        missing = [f for f in fields if f not in record]
        if missing:
            raise ConvertError(
                f"{self.path}: the first record has no field {missing[0]!r} (needed for the "
                f"{fields[missing[0]]}); it has fields {sorted(record)}. Name the field with "
                f"--{fields[missing[0]]}-field, or check that this is the right format."
            )

    def _get(self, record, field, what):
        if field not in record:
            raise RowError(f"missing field {field!r} ({what})")
        return record[field]


class AmazonJSON(_JsonLines):
    def __init__(self, opts):
        super().__init__(opts, "reviewerID", "asin", "unixReviewTime", "overall")
        self.time_explicit = bool(opts.time_field)
        self.time_format = opts.time_format or "s"

    def row(self, text):
        record = self._parse(text)
        fields = {self.user: "user", self.item: "item"}
        if self.rating:
            fields[self.rating] = "rating"
        if self.time_explicit or "reviewTime" not in record:
            fields[self.time] = "time"
        self._check_first(record, fields)
        user = _token(self._get(record, self.user, "user"), "user id")
        item = _token(self._get(record, self.item, "item"), "item id")
        rating = _rating(self._get(record, self.rating, "rating")) if self.rating else None
        if self.time in record or self.time_explicit:
            t = parse_time(self._get(record, self.time, "time"), self.time_format)
        elif "reviewTime" in record:  # "09 13, 2009"
            t = parse_time(str(record["reviewTime"]), "%m %d, %Y")
        else:
            raise RowError(f"missing field {self.time!r} (time) and 'reviewTime'")
        return user, item, rating, t


class Steam(_JsonLines):
    def __init__(self, opts):
        super().__init__(opts, "username", "product_id", "date", None)
        self.time_format = opts.time_format or "%Y-%m-%d"


class GenericJSON(_JsonLines):
    """Any JSON-lines file (strict JSON or Python literals), e.g. Yelp's review file."""

    def __init__(self, opts):
        missing = [flag for flag, v in (("--user-field", opts.user_field), ("--item-field", opts.item_field),
                                         ("--time-field", opts.time_field)) if not v]
        if missing:
            raise ConvertError(f"format 'json' needs {', '.join(missing)} (the field names)")
        super().__init__(opts, None, None, None, None)
        self.time_format = opts.time_format or "s"


class _Delimited(_Format):
    def __init__(self, sep, needed, what, time_format, rating_role=False, header=True):
        self.sep, self.needed, self.what = sep, needed, what
        self.time_format = time_format
        self.has_rating = rating_role
        self.header = header

    def start_file(self, path, first_line):
        parts = _split(first_line, self.sep)
        if self.header:
            self.index = _header_index(path, parts, self.needed, self.what)
        else:
            self.index = {}
            for col, role in self.needed.items():
                if int(col) >= len(parts):
                    raise ConvertError(
                        f"{path}: column {col} (the {role}; --no-header counts from 0) does not exist: the "
                        f"first line has {len(parts)} fields: {first_line[:120]!r}"
                    )
                self.index[role] = int(col)
        self.width = len(parts)
        return self.header

    def fields(self, text):
        parts = _split(text, self.sep)
        if len(parts) != self.width:
            raise RowError(f"expected {self.width} fields separated by {self.sep!r}, found {len(parts)}")
        return parts

    def row(self, text):
        parts = self.fields(text)
        i = self.index
        rating = _rating(parts[i["rating"]]) if self.has_rating else None
        return (_token(parts[i["user"]], "user id"), _token(parts[i["item"]], "item id"), rating,
                parse_time(parts[i["time"]], self.time_format))


class KuaiRand(_Delimited):
    def __init__(self, opts):
        needed = {opts.user_col or "user_id": "user", opts.item_col or "video_id": "item",
                  opts.time_col or "time_ms": "time"}
        if opts.click_only:
            needed["is_click"] = "click filter"
        super().__init__(",", needed, "KuaiRand log", opts.time_format or "ms")
        self.click_only = opts.click_only
        self.filter_reason = "is_click != 1 (--click-only)"

    def row(self, text):
        parts = self.fields(text)
        if self.click_only:
            flag = parts[self.index["click filter"]].strip()
            if flag not in ("1", "0", "1.0", "0.0"):
                raise RowError(f"is_click {flag!r} is not 0 or 1")
            if float(flag) != 1.0:
                return None
        i = self.index
        return (_token(parts[i["user"]], "user id"), _token(parts[i["item"]], "item id"), None,
                parse_time(parts[i["time"]], self.time_format))


class GenericCSV(_Delimited):
    def __init__(self, opts):
        missing = [flag for flag, v in (("--user-col", opts.user_col), ("--item-col", opts.item_col),
                                         ("--time-col", opts.time_col)) if not v]
        if missing:
            raise ConvertError(f"format 'csv' needs {', '.join(missing)} (the column names, or 0-based "
                               f"positions with --no-header)")
        needed = {opts.user_col: "user", opts.item_col: "item", opts.time_col: "time"}
        if opts.rating_col and not opts.no_rating:
            needed[opts.rating_col] = "rating"
        if len(needed) != 3 + ("rating" in needed.values()):
            raise ConvertError(f"format 'csv': the user, item, time (and rating) columns must differ; got {needed}")
        sep = "\t" if opts.sep in ("\\t", "tab") else opts.sep
        super().__init__(sep, needed, "CSV", opts.time_format or "s", rating_role="rating" in needed.values(),
                         header=not opts.no_header)


FORMAT_CLASSES = {
    "movielens": MovieLens,
    "amazon-csv": AmazonCSV,
    "amazon-json": AmazonJSON,
    "steam": Steam,
    "kuairand": KuaiRand,
    "csv": GenericCSV,
    "json": GenericJSON,
}


# ------------------------------------------------------------------------------------ input
def resolve_inputs(raw_path, fmt):
    """The files named by ``raw_path``: a file, a glob, or (kuairand) a folder of ``log*.csv``."""
    if os.path.isdir(raw_path):
        if fmt != "kuairand":
            raise ConvertError(f"{raw_path} is a folder; give the raw file (or a quoted glob) for format {fmt!r}")
        files = sorted(glob.glob(os.path.join(raw_path, "log*.csv")) + glob.glob(os.path.join(raw_path, "log*.csv.gz")))
        if not files:
            raise ConvertError(f"{raw_path}: no KuaiRand log files (log*.csv) in this folder; it holds "
                               f"{sorted(os.listdir(raw_path))[:10]}")
        return files
    if os.path.isfile(raw_path):
        return [raw_path]
    files = sorted(f for f in glob.glob(raw_path) if os.path.isfile(f))
    if not files:
        raise ConvertError(f"raw input {raw_path!r} does not exist (no file, folder or glob match)")
    return files


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def iter_lines(path, progress=None):
    """``(line number, text or None, decode error)`` for each line of ``path`` (gzip-aware, streamed)."""
    raw = open(path, "rb")
    try:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if _is_gzip(path) else raw
        last = 0
        for number, line in enumerate(stream, 1):
            if progress is not None and number % 4096 == 0:
                pos = raw.tell()
                progress.update(pos - last)
                last = pos
            try:
                yield number, line.decode("utf-8"), None
            except UnicodeDecodeError as err:
                yield number, None, f"not UTF-8 ({err.reason} at byte {err.start})"
        if progress is not None:
            progress.update(raw.tell() - last)
    except (OSError, EOFError) as err:  # truncated or corrupt gzip
        raise ConvertError(f"{path}: cannot read the file ({type(err).__name__}: {err}); is it complete?") from err
    finally:
        raw.close()


# ------------------------------------------------------------------------------------ convert
def convert(fmt, raw_path, out_dir, dataset=None, rejected_file=False, progress=True, log=print, **options):
    """Convert ``raw_path`` (format ``fmt``) into ``<out_dir>/<dataset>.inter``; returns the summary dict.

    ``options`` are the command-line options by their Python names (``user_col``, ``click_only``,
    ``time_format``, ...). Raises ``ConvertError`` for unusable input.
    """
    if fmt not in FORMAT_CLASSES:
        raise ConvertError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    opts = argparse.Namespace(**{**_DEFAULT_OPTIONS, **options})
    unknown = set(options) - set(_DEFAULT_OPTIONS)
    if unknown:
        raise ConvertError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_DEFAULT_OPTIONS)}")
    parser = FORMAT_CLASSES[fmt](opts)
    files = resolve_inputs(raw_path, fmt)
    dataset = dataset or os.path.basename(os.path.normpath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    out_path = os.path.join(out_dir, f"{dataset}.inter")
    rej_path = os.path.join(out_dir, f"{dataset}.rejected")
    tmp_path = out_path + ".part"

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(os.path.getsize(f) for f in files), unit="B", unit_scale=True,
                   desc=f"convert {fmt}", file=sys.stderr, mininterval=0.5)
    stats = {"read": 0, "written": 0, "rejected": 0, "filtered": 0, "header": 0, "blank": 0}
    reasons, examples = Counter(), []
    users, items = set(), set()
    t_min, t_max = math.inf, -math.inf
    header_cols = ["user_id:token", "item_id:token"] + (["rating:float"] if parser.has_rating else []) + ["timestamp:float"]
    rej = open(rej_path, "w", encoding="utf-8") if rejected_file else None
    try:
        with open(tmp_path, "w", encoding="utf-8", newline="\n") as out:
            out.write("\t".join(header_cols) + "\n")
            buffer = []
            for path in files:
                started = False
                for number, text, decode_error in iter_lines(path, bar):
                    stats["read"] += 1
                    where = f"{os.path.basename(path)}:{number}"
                    if decode_error is None:
                        text = text.rstrip("\r\n")
                        if not text.strip():
                            stats["blank"] += 1
                            continue
                    try:
                        if decode_error is not None:
                            raise RowError(decode_error)
                        if not started:
                            started = True
                            if parser.start_file(path, text):
                                stats["header"] += 1
                                continue
                        parsed = parser.row(text)
                    except RowError as err:
                        stats["rejected"] += 1
                        reasons[str(err)[:80] if "not UTF-8" not in str(err) else "not UTF-8"] += 1
                        if len(examples) < MAX_EXAMPLES:
                            examples.append(f"{where} ({err})")
                        if rej is not None:
                            raw_text = text if text is not None else "<undecodable bytes>"
                            rej.write(f"{where}\t{err}\t{raw_text}\n")
                        continue
                    if parsed is None:
                        stats["filtered"] += 1
                        continue
                    user, item, rating, t = parsed
                    users.add(user)
                    items.add(item)
                    t_min, t_max = min(t_min, t), max(t_max, t)
                    cols = [user, item] + ([_fmt_float(rating) if rating is not None else ""] if parser.has_rating else [])
                    buffer.append("\t".join(cols + [_fmt_float(t)]) + "\n")
                    stats["written"] += 1
                    if len(buffer) >= 8192:
                        out.writelines(buffer)
                        buffer.clear()
            out.writelines(buffer)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    finally:
        if bar is not None:
            bar.close()
        if rej is not None:
            rej.close()
    if stats["written"] == 0:
        os.remove(tmp_path)
        raise ConvertError(
            f"no rows written from {', '.join(files)} ({stats['read']} lines read, {stats['rejected']} rejected, "
            f"{stats['filtered']} filtered). First rejections: {examples or 'none'}. Is {fmt!r} the right format?"
        )
    os.replace(tmp_path, out_path)
    if rej is not None and stats["rejected"] == 0:
        os.remove(rej_path)
    summary = {
        "format": fmt,
        "inputs": files,
        "output": out_path,
        "rejected_file": rej_path if rej is not None and stats["rejected"] else None,
        **stats,
        "reasons": dict(reasons.most_common()),
        "examples": examples,
        "users": len(users),
        "items": len(items),
        "time_min": t_min,
        "time_max": t_max,
        "columns": header_cols,
    }
    if log is not None:
        log(format_summary(summary))
    return summary


def format_summary(s):
    def iso(t):
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    lines = [
        f"{s['format']}: {len(s['inputs'])} file(s) -> {s['output']}",
        f"  lines read     {s['read']:,} (header {s['header']}, blank {s['blank']})",
        f"  rows written   {s['written']:,}",
        f"  rows filtered  {s['filtered']:,}" + (" (by a filter you asked for)" if s["filtered"] else ""),
        f"  rows rejected  {s['rejected']:,}",
    ]
    for reason, n in list(s["reasons"].items())[:8]:
        lines.append(f"    {n:,} x {reason}")
    if s["examples"]:
        lines.append(f"    first: {'; '.join(s['examples'])}")
    if s["rejected_file"]:
        lines.append(f"    all rejected lines: {s['rejected_file']}")
    elif s["rejected"]:
        lines.append("    (add --rejected to write them all to <dataset>.rejected)")
    lines.append(f"  users {s['users']:,}, items {s['items']:,}, columns {' '.join(s['columns'])}")
    lines.append(f"  time range {iso(s['time_min'])} .. {iso(s['time_max'])} ({_fmt_float(s['time_min'])} .. "
                 f"{_fmt_float(s['time_max'])})")
    return "\n".join(lines)


_DEFAULT_OPTIONS = {
    "user_col": None, "item_col": None, "time_col": None, "rating_col": None, "time_format": None,
    "sep": ",", "no_header": False, "no_rating": False, "click_only": False,
    "user_field": None, "item_field": None, "time_field": None, "rating_field": None,
}


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m recbole_timeplug.data.convert",
        description=__doc__.split("\n\n")[0],
        epilog="See dataset/README.md for the command of every seed-paper dataset.",
    )
    p.add_argument("format", choices=FORMATS, help="raw format")
    p.add_argument("raw_path", help="raw file, quoted glob, or (kuairand) folder; .gz is read as gzip")
    p.add_argument("out_dir", help="output folder (the dataset folder, e.g. dataset/ml-1m)")
    p.add_argument("--dataset", help="dataset name = output file stem (default: the out_dir's name)")
    p.add_argument("--rejected", action="store_true", help="also write rejected lines to <dataset>.rejected")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("csv / kuairand columns")
    g.add_argument("--user-col", dest="user_col", help="user column (csv: required; kuairand: user_id)")
    g.add_argument("--item-col", dest="item_col", help="item column (csv: required; kuairand: video_id)")
    g.add_argument("--time-col", dest="time_col", help="time column (csv: required; kuairand: time_ms)")
    g.add_argument("--rating-col", dest="rating_col", help="csv: optional rating column")
    g.add_argument("--time-format", dest="time_format",
                   help="s (seconds, csv default), ms (kuairand default), iso, or a strptime pattern "
                        "(UTC), e.g. '%%Y-%%m-%%d %%H:%%M:%%S'")
    g.add_argument("--sep", default=",", help="csv: delimiter (default ','; 'tab' or '\\t' for tabs)")
    g.add_argument("--no-header", dest="no_header", action="store_true",
                   help="csv: the file has no header; columns are 0-based positions")
    g.add_argument("--click-only", dest="click_only", action="store_true", help="kuairand: keep is_click == 1")
    g = p.add_argument_group("JSON fields (amazon-json, steam, json; --time-format applies too)")
    g.add_argument("--user-field", dest="user_field", help="default reviewerID (amazon) / username (steam)")
    g.add_argument("--item-field", dest="item_field", help="default asin / product_id")
    g.add_argument("--time-field", dest="time_field", help="default unixReviewTime / date")
    g.add_argument("--rating-field", dest="rating_field", help="default overall (amazon) / none (steam)")
    p.add_argument("--no-rating", dest="no_rating", action="store_true", help="do not write a rating column")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    options = {k: getattr(args, k) for k in _DEFAULT_OPTIONS}
    try:
        convert(args.format, args.raw_path, args.out_dir, dataset=args.dataset, rejected_file=args.rejected,
                progress=not args.quiet, **options)
    except ConvertError as err:
        print(f"convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
