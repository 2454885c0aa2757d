"""Readers for the recorded-stream formats streamrec accepts (shared by replay and evaluate).

MovieLens ratings come in three layouts, auto-detected from the first line:

* ``u.data`` (ML-100k): ``user<TAB>item<TAB>rating<TAB>timestamp``
* ``ratings.dat`` (ML-1M/10M): ``user::item::rating::timestamp``
* ``ratings.csv`` (ml-latest): header ``userId,movieId,rating,timestamp``
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from streamrec.exceptions import ConfigError, InvalidRecord


@dataclass(frozen=True, slots=True)
class Rating:
    line_no: int
    user_id: str
    title_id: str
    rating: float
    ts: float


def open_text(path: str) -> IO[str]:
    """Open a text file, transparently gunzipping ``*.gz``; a clear error if missing."""
    try:
        if path.endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
        return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - caller closes
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give a ratings or events file") from None


def detect_movielens_layout(first_line: str) -> str:
    """``"csv"``, ``"dat"`` or ``"udata"``, or :class:`ConfigError` if it is none of them."""
    line = first_line.strip()
    if line.lower().startswith("userid,movieid,rating"):
        return "csv"
    if "::" in line:
        return "dat"
    if "\t" in line:
        return "udata"
    raise ConfigError(
        "not a MovieLens ratings file: expected a ratings.csv header "
        "(userId,movieId,rating,timestamp), '::'-separated ratings.dat or tab-separated u.data"
    )


def parse_movielens_line(line: str, layout: str, line_no: int) -> Rating:
    """One ratings line to a :class:`Rating`, or :class:`InvalidRecord` saying what is wrong."""
    sep = {"csv": ",", "dat": "::", "udata": "\t"}[layout]
    parts = line.rstrip("\r\n").split(sep)
    if len(parts) < 4:
        raise InvalidRecord("bad_line", f"expected 4 fields separated by {sep!r}, got {len(parts)}")
    user, item, rating_text, ts_text = (p.strip() for p in parts[:4])
    if not user or not item:
        raise InvalidRecord("missing_field", "empty user or item id")
    try:
        rating = float(rating_text)
        ts = float(ts_text)
    except ValueError:
        raise InvalidRecord("wrong_type", "rating and timestamp must be numbers") from None
    return Rating(line_no, user, item, rating, ts)


def read_movielens(path: str) -> Iterator[Rating | InvalidRecord]:
    """Every ratings line of a MovieLens file, in file order, with its line number.

    Invalid lines are yielded as :class:`InvalidRecord` (with ``line_no`` set) so callers
    can count and report them instead of stopping.
    """
    with open_text(path) as handle:
        first = handle.readline()
        if not first:
            return
        layout = detect_movielens_layout(first)
        line_no = 1
        if layout != "csv":
            yield _parse_or_error(first, layout, line_no)
        for line in handle:
            line_no += 1
            if line.strip():
                yield _parse_or_error(line, layout, line_no)


def _parse_or_error(line: str, layout: str, line_no: int) -> Rating | InvalidRecord:
    try:
        return parse_movielens_line(line, layout, line_no)
    except InvalidRecord as exc:
        exc.line_no = line_no
        return exc
