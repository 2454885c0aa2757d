"""Recorded streams as time-ordered steps: what ``streamrec evaluate`` replays.

Formats:

* ``jsonl``: our viewer events, one JSON object per line, validated like the worker
  validates them; catalogue events (``title_added``, ``episode_released``,
  ``title_removed``) in the same file describe titles to the models.
* ``movielens``: ``u.data``, ``ratings.dat`` or ``ratings.csv`` (layout auto-detected);
  ratings ``>= min_rating`` are the positive events, the others are left out.
* ``csv``: any ratings CSV whose header names a user, an item, a rating and a timestamp
  column (``userId``/``user_id``/``user``, ``movieId``/``itemId``/``title_id``/``item``,
  ``rating``, ``timestamp``/``ts``); positives as for MovieLens.

A *positive* is a user's first engagement with a title that has positive implicit feedback
(``streams.signals.feedback``): the events the protocol tests. Later events on the same
title (a stop after the play, a re-watch) are learned but not tested, since the candidate
list of a user never contains titles they already interacted with.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from models.base import UserProfile
from producers.formats import Rating, open_text, parse_movielens_line, read_movielens
from streamrec.exceptions import ConfigError, InvalidRecord
from streamrec.schema import CATALOG_TYPES, validate_catalog, validate_event
from streams.profile import apply_event, event_feedback
from streams.signals import feedback

FORMATS = ("jsonl", "csv", "movielens")
# The literature's stream: MovieLens 5-star ratings (Kitazawa, CHIIR 2017).
DEFAULT_MIN_RATING = 5.0
# MovieLens positives whose rating maps to no positive feedback (a threshold below 4
# stars) are still positives by the protocol; they are learned as this weak a signal.
MIN_POSITIVE_FEEDBACK = 0.5

_CSV_COLUMNS = {
    "user": ("userid", "user_id", "user"),
    "item": ("movieid", "itemid", "item_id", "title_id", "item", "movie"),
    "rating": ("rating",),
    "ts": ("timestamp", "ts", "time"),
}


@dataclass(frozen=True, slots=True)
class Step:
    """One viewer event, ready to replay: feedback computed, tested or not."""

    user_id: str
    title_id: str | None
    y: float
    ts: float
    event: dict[str, Any]
    positive: bool


@dataclass(frozen=True, slots=True)
class TitleChange:
    """A catalogue event: a title described to the models, or removed."""

    title: dict[str, Any]
    ts: float

    @property
    def removed(self) -> bool:
        return self.title["type"] == "title_removed"


@dataclass
class LoadedStream:
    steps: list[Step | TitleChange]
    format: str
    invalid: int = 0
    positives: int = 0
    min_rating: float | None = None
    catalog: str | None = None
    titles: list[dict[str, Any]] = field(default_factory=list)


def detect_format(path: str) -> str:
    """``jsonl``, ``movielens`` or ``csv`` from the file's name and first line."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    with open_text(path) as handle:
        first = handle.readline().strip()
    if first.startswith("{"):
        return "jsonl"
    lowered = first.lower().replace(" ", "")
    if lowered.startswith("userid,movieid,rating") or "::" in first or "\t" in first:
        return "movielens"
    if "," in first and _csv_columns(first.split(",")) is not None:
        return "csv"
    raise ConfigError(
        f"cannot tell the format of {path}; pass --format jsonl, csv or movielens"
    )


def load(path: str, fmt: str | None = None, min_rating: float | None = None,
         catalog: str | None = None) -> LoadedStream:
    """Read ``path`` into time-ordered steps (see the module docstring)."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        if min_rating is not None:
            raise ConfigError(
                "--min-rating applies to ratings files; JSONL positives are the events "
                "with positive implicit feedback"
            )
        stream = _load_jsonl(path)
    else:
        ratings = read_movielens(path) if fmt == "movielens" else _read_ratings_csv(path)
        stream = _load_ratings(ratings, fmt,
                                DEFAULT_MIN_RATING if min_rating is None else min_rating)
    if catalog:
        stream.titles = load_catalog(catalog)
        stream.catalog = catalog
    if stream.positives == 0:
        raise ConfigError(f"{path} has no positive events to evaluate on")
    return stream


# -- ratings ---------------------------------------------------------------------------------
def _load_ratings(ratings: Iterator[Rating | InvalidRecord], fmt: str, min_rating: float
                  ) -> LoadedStream:
    kept: list[Rating] = []
    invalid = 0
    for record in ratings:
        if isinstance(record, InvalidRecord):
            invalid += 1
        elif record.rating >= min_rating:
            kept.append(record)
    kept.sort(key=lambda r: r.ts)  # stable: equal times keep file order
    rated: set[tuple[str, str]] = set()
    steps: list[Step | TitleChange] = []
    for r in kept:
        event = {"event_id": f"line-{r.line_no}", "type": "rate", "user_id": r.user_id,
                 "title_id": r.title_id, "ts": r.ts, "rating": r.rating}
        y = max(feedback(event), MIN_POSITIVE_FEEDBACK)
        first = (r.user_id, r.title_id) not in rated
        rated.add((r.user_id, r.title_id))
        steps.append(Step(r.user_id, r.title_id, y, r.ts, event, first))
    positives = sum(1 for s in steps if isinstance(s, Step) and s.positive)
    return LoadedStream(steps, fmt, invalid, positives, min_rating)


def _csv_columns(header: list[str]) -> dict[str, int] | None:
    names = [h.strip().lower() for h in header]
    found = {}
    for role, options in _CSV_COLUMNS.items():
        hit = next((names.index(o) for o in options if o in names), None)
        if hit is None:
            return None
        found[role] = hit
    return found


def _read_ratings_csv(path: str) -> Iterator[Rating | InvalidRecord]:
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        columns = _csv_columns(header or [])
        if columns is None:
            raise ConfigError(
                f"{path}: the CSV header must name user, item, rating and timestamp columns "
                "(e.g. userId,movieId,rating,timestamp)"
            )
        order = [columns[r] for r in ("user", "item", "rating", "ts")]
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                picked = "\t".join(row[i] for i in order)
                yield parse_movielens_line(picked, "udata", line_no)
            except IndexError:
                yield InvalidRecord("bad_line", f"line {line_no}: too few columns")
            except InvalidRecord as exc:
                yield exc


# -- our JSONL events ----------------------------------------------------------------------------
def _load_jsonl(path: str) -> LoadedStream:
    records: list[dict[str, Any]] = []
    invalid = 0
    with open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                if not isinstance(obj, dict):
                    raise InvalidRecord("not_an_object", "expected a JSON object")
                if obj.get("type") in CATALOG_TYPES:
                    records.append(validate_catalog(obj))
                else:
                    records.append(validate_event(obj))
            except (orjson.JSONDecodeError, InvalidRecord):
                invalid += 1
    records.sort(key=lambda e: e["ts"])
    # Feedback depends on the profile (a play of a completed title is a re-watch), so
    # profiles are replayed here exactly as the worker (and then the protocol) does.
    profiles: dict[str, UserProfile] = {}
    interacted: set[tuple[str, str]] = set()
    steps: list[Step | TitleChange] = []
    positives = 0
    for event in records:
        if event["type"] in CATALOG_TYPES:
            steps.append(TitleChange(event, event["ts"]))
            continue
        user, title = event["user_id"], event.get("title_id")
        profile = profiles.get(user) or profiles.setdefault(user, UserProfile(user))
        y = event_feedback(profile, event)
        first = False
        if title is not None and event["type"] not in ("impression", "search"):
            first = y > 0 and (user, title) not in interacted
            interacted.add((user, title))
        positives += first
        steps.append(Step(user, title, y, event["ts"], event, first))
        apply_event(profile, event, y)
    return LoadedStream(steps, "jsonl", invalid, positives)


# -- catalogue ------------------------------------------------------------------------------------
def sibling_catalog(path: str, fmt: str) -> str | None:
    """The titles file that came with ``path``, if there is one: MovieLens' next to its
    ratings, or the ``.catalog.jsonl`` that ``streamrec simulate`` writes beside events."""
    if fmt == "jsonl":
        from producers.simulator import catalog_path_for

        candidate = catalog_path_for(path)
        return candidate if candidate != path and Path(candidate).is_file() else None
    folder = Path(path).parent
    for name in ("movies.csv", "movies.dat", "u.item"):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def load_catalog(path: str) -> list[dict[str, Any]]:
    """Titles as catalogue dicts (``title_id``, ``name``, ``genres``) from MovieLens files
    (``movies.csv``, ``movies.dat``, ``u.item``) or JSONL catalogue events."""
    name = Path(path).name
    titles: list[dict[str, Any]] = []
    with open_text(path) as handle:
        if name.endswith(("jsonl", "jsonl.gz", "ndjson")):
            for line in handle:
                try:
                    obj = orjson.loads(line)
                    if isinstance(obj, dict) and obj.get("type") in ("title_added",
                                                                      "episode_released"):
                        titles.append(validate_catalog(obj))
                except (orjson.JSONDecodeError, InvalidRecord):
                    continue
        elif name.startswith("u.item"):
            genre_names = ["unknown", "Action", "Adventure", "Animation", "Children", "Comedy",
                           "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
                           "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
                           "Western"]
            for line in handle:
                parts = line.rstrip("\n").split("|")
                if len(parts) >= 24:
                    genres = [g for g, flag in zip(genre_names, parts[5:24], strict=True)
                              if flag == "1"]
                    titles.append({**_movielens_title(parts[0], parts[1], ""),
                                   "genres": genres})
        elif name.endswith(".dat"):
            for line in handle:
                parts = line.rstrip("\n").split("::")
                if len(parts) >= 3:
                    titles.append(_movielens_title(parts[0], parts[1], parts[2]))
        else:
            for row in csv.DictReader(handle):
                if row.get("movieId"):
                    titles.append(_movielens_title(row["movieId"], row.get("title", ""),
                                                   row.get("genres", "")))
    if not titles:
        raise ConfigError(f"{path} describes no titles; give movies.csv, movies.dat, u.item "
                          "or a JSONL file of title_added events")
    return titles


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _movielens_title(title_id: str, name: str, genres: str) -> dict[str, Any]:
    listed = [g for g in genres.split("|") if g and g != "(no genres listed)"]
    title: dict[str, Any] = {"title_id": title_id, "name": name, "genres": listed}
    year = _YEAR.search(name.strip())  # MovieLens names end in "(1995)"
    if year:
        title["year"] = int(year.group(1))
    return title
