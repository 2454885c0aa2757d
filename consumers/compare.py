"""Are two recorded streams the same? Same records, and the same order per key.

Global order across partitions legitimately differs between a file and a recording of
a topic, so "identical" means: the same multiset of (key, value) records and, for every
key, the same sequence of values. Each file is read exactly as ``replay`` would send it
(valid records only, same keys, same bytes), and each key's sequence is reduced to a
count and a running BLAKE2 digest, so a million records need memory per key, not per
record.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from producers.sources import Source, check_source

# Digest bytes per key; 16 bytes make an accidental match astronomically unlikely.
_DIGEST_BYTES = 16


@dataclass
class Fingerprint:
    """Per-key record counts and order-sensitive digests of a stream."""

    records: int = 0
    invalid: int = 0
    per_key: dict[Any, Any] = field(default_factory=dict)  # key -> [count, blake2b]
    unkeyed: Counter[bytes] = field(default_factory=Counter)  # no key: no order to keep

    def summary(self) -> dict[Any, tuple[int, bytes]]:
        return {k: (n, h.digest()) for k, (n, h) in self.per_key.items()}


def fingerprint(paths: list[str], kind: str, fmt: str | None = None) -> Fingerprint:
    """The :class:`Fingerprint` of what replaying ``paths`` would send."""
    result = Fingerprint()
    per_key = result.per_key
    for path in paths:
        source = Source(path, check_source(path, fmt, kind), kind)
        for _line_no, key, value, _ts, error in source:
            if error is not None:
                result.invalid += 1
                continue
            result.records += 1
            if key is None:
                result.unkeyed[hashlib.blake2b(value, digest_size=_DIGEST_BYTES).digest()] += 1
                continue
            entry = per_key.get(key)
            if entry is None:
                entry = per_key[key] = [0, hashlib.blake2b(digest_size=_DIGEST_BYTES)]
            entry[0] += 1
            # Length-prefixed so record boundaries are part of what is compared.
            entry[1].update(len(value).to_bytes(4, "big"))
            entry[1].update(value)
    return result


def compare(expected: Fingerprint, actual: Fingerprint, limit: int = 5) -> list[str]:
    """Differences between two streams, worst first; empty when they are identical."""
    problems: list[str] = []
    if expected.records != actual.records:
        problems.append(f"expected {expected.records:,} records, got {actual.records:,}")
    want, got = expected.summary(), actual.summary()
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing:
        problems.append(f"{len(missing):,} keys missing, e.g. {_keys(missing, limit)}")
    if extra:
        problems.append(f"{len(extra):,} unexpected keys, e.g. {_keys(extra, limit)}")
    differing = [k for k in want if k in got and want[k] != got[k]]
    if differing:
        examples = ", ".join(
            f"{k!r} ({want[k][0]} expected, {got[k][0]} recorded)" for k in differing[:limit]
        )
        problems.append(f"{len(differing):,} keys differ in records or order, e.g. {examples}")
    if expected.unkeyed != actual.unkeyed:
        problems.append("the records without a key differ")
    return problems


def _keys(keys: list[Any], limit: int) -> str:
    return ", ".join(repr(k) for k in keys[:limit])
