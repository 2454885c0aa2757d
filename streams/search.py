"""Search: match what users type against the catalogue, tolerant of case, accents and typos.

Pure and in memory. :class:`SearchIndex` follows a :class:`~streams.titles.TitleIndex`
(titles added or removed update it) and indexes each title's name, genres, cast and
director as normalised tokens (:func:`normalise`: Unicode NFKD with the accents dropped,
case-folded, punctuation as spaces). A query token matches an index token exactly, as a
prefix (3+ characters, for people still typing) or within a small edit distance (1 for
4..6 characters, 2 beyond), found through a trigram index so a query never scans the
vocabulary. A title's score sums, over the query's tokens, the best field weight it
matched with (name 3, cast and director 2, genre 1), discounted for fuzzy matches;
a title must match every token of the query except stop words ("the", "of", ...).

What the worker does with the matches (``streams.product``): the user's recent queries
(kept in Redis by the events path) give weak positive weight to the titles they match
when the user is ranked, which shifts genre, cast and neighbour affinities toward them;
a query that matches nothing is counted as demand (``streamrec insights``).
"""

from __future__ import annotations

import unicodedata
from collections import OrderedDict
from typing import Any

from streams.titles import TitleIndex, TitleInfo

FIELD_WEIGHTS = {"name": 3.0, "cast": 2.0, "director": 2.0, "genre": 1.0}
STOP_WORDS = frozenset({"the", "a", "an", "of", "and", "in", "on", "to", "la", "le", "el",
                        "de", "der", "die", "das"})
# How much a fuzzy (typo) or prefix match counts relative to an exact one.
FUZZY_DISCOUNT = 0.7
PREFIX_DISCOUNT = 0.8
MIN_PREFIX = 3
# Queries remembered with their matches; users repeat queries, and a user's recent
# queries are re-matched every time they are ranked.
CACHE_SIZE = 20_000
# Matches kept per cached query: the events path asks for 1 or 3 (``match``'s default is
# 10); keeping 50 made the cache several KB per distinct query, most of a user's RSS cost.
CACHED_MATCHES = 10
MAX_QUERY_TOKENS = 8
# Words remembered with the titles they match (each a dict of up to the catalogue's size:
# a few thousand words cover what users type, typos included), and the (word, title)
# entries they may hold in all, so a catalogue where common words match thousands of
# titles cannot grow the cache past a few tens of MB.
WORD_CACHE_SIZE = 5_000
WORD_CACHE_ENTRIES = 200_000


def normalise(text: str) -> str:
    """Case-folded, accents removed, punctuation as single spaces.

    Examples
    --------
    >>> normalise("  Amélie: Le Fabuleux  Destin! ")
    'amelie le fabuleux destin'
    """
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join("".join(c if c.isalnum() else " " for c in stripped).split())


def tokens(text: str) -> list[str]:
    return normalise(text).split()


def _trigrams(token: str) -> set[str]:
    padded = f"^{token}$"
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance, or ``limit + 1`` as soon as it must exceed ``limit``.

    Examples
    --------
    >>> edit_distance("moreau", "moraeu", 2), edit_distance("drama", "comedy", 2)
    (2, 3)
    """
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        best = i
        for j, cb in enumerate(b, 1):
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            current.append(value)
            best = min(best, value)
        if best > limit:
            return limit + 1
        previous = current
    return previous[-1]


def typo_budget(token: str) -> int:
    if len(token) < 4:
        return 0
    return 1 if len(token) <= 6 else 2


class SearchIndex:
    """An inverted index over a :class:`TitleIndex`, kept in step with it.

    Examples
    --------
    >>> titles = TitleIndex()
    >>> index = SearchIndex(titles)
    >>> titles.add({"title_id": "t1", "name": "Amélie", "genres": ["Romance"],
    ...             "cast": ["Audrey Tautou"]})
    >>> titles.add({"title_id": "t2", "name": "Heat", "genres": ["Crime"]})
    >>> [t for t, _ in index.match("amelie")], [t for t, _ in index.match("audrey tatou")]
    (['t1'], ['t1'])
    >>> index.match("galactic llama")
    []
    """

    def __init__(self, titles: TitleIndex) -> None:
        self.titles = titles
        # token -> {title_id: best field weight}
        self._postings: dict[str, dict[str, float]] = {}
        self._trigram: dict[str, set[str]] = {}
        self._cache: OrderedDict[str, tuple[tuple[str, float], ...]] = OrderedDict()
        # Normalised word -> {title: its best discounted weight}: a query the cache above
        # has not seen usually shares its words with ones it has (names, genres, people).
        self._words: dict[str, dict[str, float]] = {}
        self._word_entries = 0
        for info in titles:
            self._add(info)
        titles.on_add.append(self._add)
        titles.on_remove.append(self._remove)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("SearchIndex is rebuilt from its TitleIndex, not pickled")

    @staticmethod
    def _fields(info: TitleInfo) -> dict[str, float]:
        out: dict[str, float] = {}
        pairs = [(info.name, "name")] + [(g, "genre") for g in info.genres]
        pairs += [(c, "cast") for c in info.cast]
        if info.director:
            pairs.append((info.director, "director"))
        for text, field in pairs:
            weight = FIELD_WEIGHTS[field]
            for token in tokens(text):
                if out.get(token, 0.0) < weight:
                    out[token] = weight
        return out

    def _add(self, info: TitleInfo) -> None:
        for token, weight in self._fields(info).items():
            postings = self._postings.get(token)
            if postings is None:
                postings = self._postings[token] = {}
                for gram in _trigrams(token):
                    self._trigram.setdefault(gram, set()).add(token)
            postings[info.title_id] = weight
        self._cache.clear()
        self._forget_words()

    def _remove(self, info: TitleInfo) -> None:
        for token in self._fields(info):
            postings = self._postings.get(token)
            if postings is None:
                continue
            postings.pop(info.title_id, None)
            if not postings:
                del self._postings[token]
                for gram in _trigrams(token):
                    bucket = self._trigram.get(gram)
                    if bucket is not None:
                        bucket.discard(token)
                        if not bucket:
                            del self._trigram[gram]
        self._cache.clear()
        self._forget_words()

    def _token_matches(self, token: str) -> list[tuple[str, float]]:
        """Index tokens that ``token`` matches, with the discount of each match."""
        out: list[tuple[str, float]] = []
        if token in self._postings:
            out.append((token, 1.0))
        budget = typo_budget(token)
        grams = _trigrams(token)
        counts: dict[str, int] = {}
        for gram in grams:
            for candidate in self._trigram.get(gram, ()):
                counts[candidate] = counts.get(candidate, 0) + 1
        for candidate, shared in counts.items():
            if candidate == token:
                continue
            if len(token) >= MIN_PREFIX and candidate.startswith(token):
                out.append((candidate, PREFIX_DISCOUNT))
            elif budget and shared >= len(grams) - 3 * budget and \
                    edit_distance(token, candidate, budget) <= budget:
                out.append((candidate, FUZZY_DISCOUNT))
        return out

    def _word_scores(self, word: str) -> dict[str, float]:
        """Every title ``word`` matches, with its best field weight times the match's
        discount; memoised per word (callers only read the dict)."""
        best = self._words.get(word)
        if best is not None:
            return best
        best = {}
        for token, discount in self._token_matches(word):
            for title, weight in self._postings[token].items():
                value = weight * discount
                if best.get(title, 0.0) < value:
                    best[title] = value
        # Bounded: words come from users.
        if (len(self._words) >= WORD_CACHE_SIZE
                or self._word_entries + len(best) > WORD_CACHE_ENTRIES):
            self._forget_words()
        self._words[word] = best
        self._word_entries += len(best)
        return best

    def _forget_words(self) -> None:
        self._words.clear()
        self._word_entries = 0

    def match(self, query: str, limit: int = 10) -> list[tuple[str, float]]:
        """Titles matching ``query``, best first, with their scores (empty: no match)."""
        cached = self._cache.get(query)
        if cached is not None and (limit <= CACHED_MATCHES or len(cached) < CACHED_MATCHES):
            return list(cached[:limit])
        key = normalise(query)
        words = key.split()[:MAX_QUERY_TOKENS]
        meaningful = [w for w in words if w not in STOP_WORDS] or words
        scores: dict[str, float] | None = None
        for word in meaningful:
            best = self._word_scores(word)
            if scores is None:
                scores = best
            else:
                scores = {t: s + best[t] for t, s in scores.items() if t in best}
            if not scores:
                break
        result = sorted((scores or {}).items(), key=lambda ts: (-ts[1], ts[0]))[:50]
        # Keyed by the query as typed: the common repeat costs one dict lookup.
        self._cache[query] = tuple(result[:CACHED_MATCHES])
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result[:limit]
