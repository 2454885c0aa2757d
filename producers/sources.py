"""Reading recorded streams for replay: JSONL, CSV and MovieLens, plain or gzipped.

Every source yields one tuple per record, ``(line_no, key, value, ts, error)``:

* ``value`` is the record as it will be produced (bytes) and ``key`` its Kafka key
  (``user_id`` for viewer events, ``title_id`` for catalogue events);
* ``error`` is ``None``, or an :class:`InvalidRecord` saying why the record at
  ``line_no`` breaks its contract (then ``key``/``ts`` are meaningless).

Plain tuples rather than objects: replay reads 200,000+ records a second and every
allocation shows. JSONL lines are validated by parsing, then sent as the original bytes
(no re-serialisation), so a replay sends exactly what was recorded.

``record`` writes JSONL that replay reads back unchanged: a record whose value is a
one-line JSON object keyed by its own ``user_id``/``title_id`` is written as that value;
anything else as a wrapper line ``{"__record__": 1, "key": ..., "value": ..., ...}``
(``key_base64``/``value_base64`` when not UTF-8), whose key replay uses as given.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import orjson

from producers.formats import detect_movielens_layout, parse_movielens_line
from streamrec.exceptions import ConfigError, InvalidRecord
from streamrec.schema import (
    DEFAULT_MAX_BYTES,
    decode_json_object,
    validate_catalog,
    validate_event,
)

EVENTS = "events"
CATALOG = "catalog"
FORMATS = ("jsonl", "csv", "movielens")
RECORD_WRAPPER_PREFIX = b'{"__record__"'
# Read buffer per file, bytes: large reads keep the per-line cost down.
_READ_BUFFER = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
# Bytes of a file's first line read to tell its format and encoding: an event is a few
# hundred bytes; a longer first line is not one (and is not read whole just to say so).
_SNIFF_BYTES = 1 << 20

Record = tuple[int, Any, bytes, float, InvalidRecord | None]
# What the readers read lines from: the file, or a gzip stream over it (GzipFile is not an
# IO[bytes] to the type checker, though it reads the same).
BinaryReader = io.BufferedReader | gzip.GzipFile

# -- MovieLens mapping ---------------------------------------------------------------------

# MovieLens has no durations; a nominal feature length, seconds.
MOVIELENS_DURATION_S = 5400.0
# A rating of this or more also means the title was watched to the end.
MOVIELENS_COMPLETE_RATING = 4.0


def movielens_watch_ratio(rating: float) -> float:
    """Share of the title watched for a MovieLens rating: ``((rating - 1) / 3)^2``
    clamped to ``[0.05, 1]``, and 1 from 4 stars up.

    Examples
    --------
    >>> [round(movielens_watch_ratio(r), 2) for r in (0.5, 1, 2, 3, 3.5, 4, 5)]
    [0.05, 0.05, 0.11, 0.44, 0.69, 1.0, 1.0]
    """
    if rating >= MOVIELENS_COMPLETE_RATING:
        return 1.0
    return min(1.0, max(0.05, ((rating - 1.0) / 3.0) ** 2))


def movielens_events(user: str, item: str, rating: float, ts: float) -> list[dict[str, Any]]:
    """Viewer events for one MovieLens rating, all at the rating's time, in this order:
    ``play`` at 0, then ``complete`` (rating >= 4) or ``stop`` at the watch ratio, then
    ``rate`` (ratings below 1, i.e. 0.5, become 1). ``event_id`` is
    ``ml-<user>-<item>-<ts>-<type>``: replaying a file twice repeats the same ids.

    Examples
    --------
    >>> [(e["type"], e.get("position_s")) for e in movielens_events("1", "31", 2.0, 9e8)]
    [('play', 0.0), ('stop', 600.0), ('rate', None)]
    >>> movielens_events("1", "31", 5.0, 9e8)[1]["event_id"]
    'ml-1-31-900000000-complete'
    """
    stamp = str(int(ts)) if float(ts).is_integer() else repr(ts)
    prefix = f"ml-{user}-{item}-{stamp}-"
    ratio = movielens_watch_ratio(rating)
    end = "complete" if rating >= MOVIELENS_COMPLETE_RATING else "stop"
    common = {"user_id": user, "ts": ts, "title_id": item}
    return [
        {"event_id": prefix + "play", "type": "play", **common, "position_s": 0.0,
         "duration_s": MOVIELENS_DURATION_S},
        {"event_id": prefix + end, "type": end, **common,
         "position_s": round(ratio * MOVIELENS_DURATION_S, 1),
         "duration_s": MOVIELENS_DURATION_S},
        {"event_id": prefix + "rate", "type": "rate", **common, "rating": max(1.0, rating)},
    ]


# -- format detection ----------------------------------------------------------------------

def detect_format(path: str) -> str:
    """``jsonl``, ``csv`` or ``movielens`` from the file name (and a CSV's header)."""
    name = os.path.basename(path).lower().removesuffix(".gz")
    if name.endswith(".dat") or name == "u.data":
        return "movielens"
    if name.endswith(".csv"):
        with _open(path) as (reader, _raw):
            first = reader.readline().decode("utf-8", "replace")
        return "movielens" if first.strip().lower().startswith("userid,movieid") else "csv"
    return "jsonl"


def check_source(path: str, fmt: str | None, kind: str) -> str:
    """The format to read ``path`` with; a :class:`ConfigError` now rather than halfway
    through a replay if the file is missing or is not what the format expects."""
    if not os.path.exists(path):
        raise ConfigError(f"file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory; give an events or ratings file")
    resolved = fmt or detect_format(path)
    if resolved not in FORMATS:
        raise ConfigError(f"unknown format {resolved!r}; use one of {', '.join(FORMATS)}")
    if resolved == "movielens" and kind == CATALOG:
        raise ConfigError("MovieLens ratings are viewer events; replay them to the events topic")
    with _open(path) as (reader, _raw):
        try:
            head = reader.peek(4)[:4]
            first_line = reader.readline(_SNIFF_BYTES)
            first = first_line.decode("utf-8", "replace")
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{path}: cannot read it: {exc}") from None
    encoding = _wide_encoding(head)
    if encoding is not None:
        suffix = os.path.splitext(path.removesuffix(".gz"))[1]
        raise ConfigError(
            f"{path} is {encoding} text; replay reads UTF-8: convert it first, e.g. "
            f"iconv -f {encoding} -t UTF-8 {path} > converted{suffix}")
    if resolved == "jsonl" and _json_array(first_line):
        name = os.path.basename(path.removesuffix(".gz"))
        raise ConfigError(
            f"{path} is one JSON array; replay reads JSON Lines, one event object per "
            f"line: convert it first, e.g. jq -c '.[]' {path} > {os.path.splitext(name)[0]}"
            f".jsonl")
    if resolved == "movielens" and first.strip():
        try:
            detect_movielens_layout(first)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if resolved == "csv" and first.strip():
        _check_csv_header(path, next(csv.reader([first]), []), kind)
    return resolved


def _json_array(first_line: bytes) -> bool:
    r"""Whether a would-be JSONL file is one JSON array of events (an export, pretty-printed
    or on one line) rather than an object per line, judging by its first line (at most
    :data:`_SNIFF_BYTES`). Read as JSONL it was one "oversized" record, or an invalid
    record per line of the pretty print, and the one-line kind was read whole into memory.

    Examples
    --------
    >>> [_json_array(line) for line in (b"[\n", b'[{"a": 1},\n', b'[{"a":1},{"b":2}]\n')]
    [True, True, True]
    >>> [_json_array(line) for line in (b'{"a": 1}\n', b'["a"]\n', b"")]
    [False, False, False]
    """
    line = first_line.strip()
    if not line.startswith(b"["):
        return False
    if line == b"[" or not first_line.endswith(b"\n") or line.endswith((b",", b"{")):
        return True  # the opening of a pretty print, or a line too long to be one event
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line.startswith(b"[{")  # an array's first element(s), then a line break
    return bool(value) and all(isinstance(item, dict) for item in value)


def _wide_encoding(head: bytes) -> str | None:
    """The UTF-16 or UTF-32 encoding (as iconv names it) a file starts like, from its
    first 4 bytes: a byte-order mark, or ASCII with zero bytes between; else ``None``.
    Read as UTF-8, such a file was one invalid record per line, and one more for the
    zero byte left after the last newline.

    Examples
    --------
    >>> [_wide_encoding("{".encode(e)) for e in ("utf-16", "utf-16-le", "utf-32-be")]
    ['UTF-16', 'UTF-16LE', 'UTF-32BE']
    >>> _wide_encoding(b'{"ev') is None
    True
    """
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    if len(head) == 4 and head[0] and not any(head[1:]):
        return "UTF-32LE"
    if len(head) == 4 and head[3] and not any(head[:3]):
        return "UTF-32BE"
    if len(head) >= 2 and head[0] and not head[1]:
        return "UTF-16LE"
    if len(head) >= 2 and head[1] and not head[0]:
        return "UTF-16BE"
    return None


# -- sources -------------------------------------------------------------------------------

class Source:
    """The records of one file. Iterate once; :meth:`position` says how far it got.

    Parameters
    ----------
    path
        The file; a gzipped one (told by its first bytes) is decompressed on the fly.
    fmt
        ``jsonl``, ``csv`` or ``movielens`` (see :func:`check_source`).
    kind
        :data:`EVENTS` or :data:`CATALOG`: which contract to validate against.
    max_bytes
        Records larger than this are invalid (``oversized``), as the worker would say.
    """

    def __init__(self, path: str, fmt: str, kind: str,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.fmt = fmt
        self.kind = kind
        self.max_bytes = max_bytes
        self.size = os.path.getsize(path)
        self._raw: BinaryIO | None = None
        self.line_no = 0

    def position(self) -> int:
        """Bytes of the file (compressed, for ``.gz``) read so far."""
        if self._raw is None or self._raw.closed:
            return self.size if self.line_no else 0
        return self._raw.tell()

    def __iter__(self) -> Iterator[Record]:
        readers = {"jsonl": self._jsonl, "csv": self._csv, "movielens": self._movielens}
        with _open(self.path) as (reader, raw):
            self._raw = raw
            try:
                yield from readers[self.fmt](reader)
            except (OSError, EOFError, zlib.error) as exc:
                raise ConfigError(
                    f"{self.path}: cannot read past line {self.line_no}: {exc}"
                ) from None

    def _jsonl(self, reader: BinaryReader) -> Iterator[Record]:
        validate = validate_catalog if self.kind == CATALOG else validate_event
        key_field = "title_id" if self.kind == CATALOG else "user_id"
        max_bytes = self.max_bytes
        for line_no, raw_line in enumerate(reader, 1):
            self.line_no = line_no
            line = raw_line.strip()
            if not line:
                continue
            if line.startswith(RECORD_WRAPPER_PREFIX):
                yield self._unwrap(line, line_no, validate, key_field)
                continue
            try:
                event = validate(decode_json_object(line, max_bytes))
            except InvalidRecord as exc:
                yield line_no, None, line, 0.0, exc
                continue
            yield line_no, event[key_field], line, event["ts"], None

    def _unwrap(self, line: bytes, line_no: int, validate: Any, key_field: str) -> Record:
        try:
            key, value = unwrap_record(line)
            event = validate(decode_json_object(value, self.max_bytes))
        except InvalidRecord as exc:
            return line_no, None, line, 0.0, exc
        return line_no, key, value or b"", event["ts"], None

    def _csv(self, reader: BinaryReader) -> Iterator[Record]:
        text = io.TextIOWrapper(reader, encoding="utf-8", errors="replace", newline="")
        rows = csv.reader(text)
        header = next(rows, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        _check_csv_header(self.path, header, self.kind)
        validate = validate_catalog if self.kind == CATALOG else validate_event
        key_field = "title_id" if self.kind == CATALOG else "user_id"
        for row in rows:
            line_no = self.line_no = rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            try:
                event = _typed_row(header, row, self.kind)
                value = orjson.dumps(event)
                validate(event)
            except InvalidRecord as exc:
                yield line_no, None, b"", 0.0, exc
                continue
            yield line_no, event[key_field], value, event["ts"], None

    def _movielens(self, reader: BinaryReader) -> Iterator[Record]:
        layout = None
        for line_no, raw_line in enumerate(reader, 1):
            self.line_no = line_no
            line = raw_line.decode("utf-8", "replace")
            if not line.strip():
                continue
            if layout is None:
                layout = detect_movielens_layout(line)
                if layout == "csv":
                    continue  # the header
            try:
                rating = parse_movielens_line(line, layout, line_no)
                if not 0.5 <= rating.rating <= 5.0:
                    raise InvalidRecord("out_of_range",
                                        f"rating={rating.rating} must be within 0.5..5")
                events = movielens_events(rating.user_id, rating.title_id, rating.rating,
                                          rating.ts)
                for event in events:
                    validate_event(dict(event))
            except InvalidRecord as exc:
                yield line_no, None, b"", 0.0, exc
                continue
            for event in events:
                yield line_no, event["user_id"], orjson.dumps(event), event["ts"], None


class _open:  # noqa: N801 - used like open()
    """Context manager: ``(line reader, raw file)``; the raw file's position is the
    compressed offset for ``.gz`` files."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> tuple[BinaryReader, BinaryIO]:
        try:
            # (A BufferedReader: it can peek. typeshed says BinaryIO for a buffer size.)
            self._raw = cast(io.BufferedReader,
                             open(self.path, "rb", buffering=_READ_BUFFER))  # noqa: SIM115
        except FileNotFoundError:
            raise ConfigError(f"file not found: {self.path}") from None
        except IsADirectoryError:
            raise ConfigError(f"{self.path} is a directory; give a file") from None
        except PermissionError:
            raise ConfigError(f"{self.path}: permission denied") from None
        # Gzip by its magic number, not its name: a DAY1.JSONL.GZ or a gzip saved without
        # the suffix was read as raw bytes, every line an invalid record.
        if self._raw.peek(2)[:2] == _GZIP_MAGIC:
            self._reader: BinaryReader = gzip.GzipFile(fileobj=self._raw, mode="rb")
        else:
            self._reader = self._raw
        # A byte-order mark (spreadsheets write one in "UTF-8 CSV") is not part of the
        # first line: left there, it made the CSV header's first name unrecognisable.
        if self._reader.peek(3)[:3] == _UTF8_BOM:
            self._reader.read(3)
        return self._reader, self._raw

    def __exit__(self, *exc: object) -> None:
        self._reader.close()
        self._raw.close()


# -- CSV -----------------------------------------------------------------------------------

_REQUIRED_COLUMNS = {
    EVENTS: ("event_id", "type", "user_id", "ts"),
    CATALOG: ("event_id", "type", "ts", "title_id"),
}
_FLOAT_COLUMNS = {
    EVENTS: frozenset({"ts", "position_s", "duration_s", "rating"}),
    CATALOG: frozenset({"ts", "duration_s"}),
}
_INT_COLUMNS = {EVENTS: frozenset(), CATALOG: frozenset({"season", "episode", "year"})}
# Catalogue list fields are written as one cell with items separated by '|'.
_LIST_COLUMNS = {EVENTS: frozenset(), CATALOG: frozenset({"genres", "cast", "artwork_ids"})}


def _check_csv_header(path: str, header: list[str], kind: str) -> None:
    names = {name.strip() for name in header}
    missing = [c for c in _REQUIRED_COLUMNS[kind] if c not in names]
    if missing:
        raise ConfigError(
            f"{path}: the CSV header must name the event fields; missing "
            f"{', '.join(missing)} (got {', '.join(header) or 'an empty line'})"
        )


def _typed_row(header: list[str], row: list[str], kind: str) -> dict[str, Any]:
    """A CSV row to an event dict: empty cells are absent, numbers become numbers."""
    if len(row) > len(header):
        raise InvalidRecord("bad_line", f"{len(row)} cells but the header has {len(header)}")
    floats, ints, lists = _FLOAT_COLUMNS[kind], _INT_COLUMNS[kind], _LIST_COLUMNS[kind]
    event: dict[str, Any] = {}
    for name, cell in zip(header, row, strict=False):
        cell = cell.strip()
        if not cell:
            continue
        if name in floats or name in ints:
            try:
                event[name] = int(cell) if name in ints else float(cell)
            except ValueError:
                kind_text = "a whole number" if name in ints else "a number"
                raise InvalidRecord(
                    "wrong_type", f"column {name!r} must be {kind_text}, got {cell[:40]!r}"
                ) from None
        elif name in lists:
            event[name] = [item.strip() for item in cell.split("|") if item.strip()]
        else:
            event[name] = cell
    return event


def open_output(path: str) -> io.BufferedIOBase:
    """A binary file to write JSONL to; ``.gz`` compresses. One-line error if it cannot."""
    try:
        if path.lower().endswith(".gz"):
            # Level 5: most of level 9's size at a fraction of its CPU.
            return gzip.open(path, "wb", compresslevel=5)
        return open(path, "wb")  # noqa: SIM115 - caller closes
    except OSError as exc:
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            raise ConfigError(f"cannot write {path}: its directory {folder} does not exist "
                              f"(create it first: mkdir -p {folder})") from None
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


# -- the record line format ----------------------------------------------------------------

def wrap_record(
    key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int,
    timestamp_ms: int | None,
) -> bytes:
    """A record that cannot be written as its bare value, as one JSONL line."""
    line: dict[str, Any] = {"__record__": 1, "topic": topic, "partition": partition,
                            "offset": offset, "timestamp_ms": timestamp_ms}
    for name, raw in (("key", key), ("value", value)):
        if raw is None:
            line[name] = None
            continue
        try:
            line[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            line[f"{name}_base64"] = base64.b64encode(raw).decode("ascii")
    return orjson.dumps(line)


def unwrap_record(line: bytes) -> tuple[str | bytes | None, bytes | None]:
    """``(key, value)`` of a wrapper line written by :func:`wrap_record`; a text key
    comes back as ``str`` (as replay derives keys), a base64 one as ``bytes``."""
    try:
        wrapper = orjson.loads(line)
        key: str | bytes | None = wrapper.get("key")
        if wrapper.get("key_base64") is not None:
            key = base64.b64decode(wrapper["key_base64"], validate=True)
        value: bytes | None = None
        if wrapper.get("value_base64") is not None:
            value = base64.b64decode(wrapper["value_base64"], validate=True)
        elif wrapper.get("value") is not None:
            value = str(wrapper["value"]).encode("utf-8")
    except (orjson.JSONDecodeError, AttributeError, ValueError) as exc:
        raise InvalidRecord("invalid_json", f"broken record wrapper: {exc}") from None
    if key is not None and not isinstance(key, str | bytes):
        raise InvalidRecord("wrong_type", "the wrapper's key must be a string")
    return key, value


def natural_key_line(value: bytes | None, key: bytes | None, key_field: str) -> bool:
    """True if ``value`` can be written bare: a one-line JSON object whose ``key_field``
    equals the record's key, so replay derives the same key from it."""
    if (key is None or value is None or value[:1] != b"{" or value[-1:] != b"}"
            or b"\n" in value or b"\r" in value or value.startswith(RECORD_WRAPPER_PREFIX)):
        return False
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(obj, dict):
        return False
    natural = obj.get(key_field)
    return isinstance(natural, str) and natural.encode("utf-8") == key
