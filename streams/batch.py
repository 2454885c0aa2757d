"""The pure core of the events path: a batch of records in, outputs out, no I/O.

``decode_batch`` validates records and builds dead letters; ``learn_and_rank`` replays
the applied events on the users' profiles (so each model update sees the profile as it
was just before that event), teaches the models, measures online recall against the
lists last emitted, and ranks each touched user once. The async shell in
``streams.pipeline`` does the Kafka and Redis I/O around these two functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from models.batched import MAX_HISTORY, learn_many, rank_many
from models.hybrid import Hybrid
from streamrec.exceptions import InvalidRecord
from streamrec.schema import dead_letter, decode_event
from streams.experiment_batch import ExperimentBatch, ExperimentTallies
from streams.experiments import ExperimentConfig
from streams.profile import apply_event, event_feedback
from streams.signals import feedback
from streams.state import StoredProfile, event_digest

if TYPE_CHECKING:
    from streams.product import ProductLayer

# Lists kept per user for online recall@k: the product's and the popularity baseline's.
RECALL_K = 10
RECALLED_MODELS = ("streamrec", "popularity")
# Event types that say the user engaged with a title (what online recall tries to predict).
ENGAGEMENT_TYPES = frozenset({"play", "resume", "complete", "click"})


class Record(Protocol):
    """What the batch needs of a Kafka message (confluent_kafka.Message satisfies it)."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...


@dataclass
class DecodedBatch:
    events: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead_reasons: dict[str, int] = field(default_factory=dict)


def decode_batch(records: Sequence[Record], max_bytes: int, now: float) -> DecodedBatch:
    """Validate every record; invalid ones become dead-letter messages with a reason."""
    out = DecodedBatch()
    events, dead, reasons = out.events, out.dead_letters, out.dead_reasons
    for record in records:
        value = record.value()
        try:
            events.append(decode_event(value, max_bytes, now))
        except InvalidRecord as exc:
            key = record.key()
            letter = dead_letter(exc.reason, exc.detail, record.topic(), record.partition(),
                                 record.offset(), key, value, now)
            dead.append((key, orjson.dumps(letter)))
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
    return out


def feedbacks_for_store(events: Sequence[dict[str, Any]]) -> list[float]:
    """Feedback without the re-watch bonus: the Lua script adds it from its own state."""
    return [feedback(e) for e in events]


@dataclass
class RankedBatch:
    # (key, value) messages for the recommendations topic.
    recommendations: list[tuple[bytes, bytes]] = field(default_factory=list)
    # user -> serialized lists just emitted (stored for the next online-recall check).
    last_lists: dict[str, bytes] = field(default_factory=dict)
    # event time of every applied event, for event-to-recommendation latency.
    event_times: list[float] = field(default_factory=list)
    applied_by_type: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    # model -> (hits, tests) of online recall@k in this batch.
    recall: dict[str, list[int]] = field(default_factory=dict)
    # The same, counting only tests whose title was new to the user (not in their history
    # or completed titles just before the event): re-engagements reward repeating lists.
    recall_new_titles: dict[str, list[int]] = field(default_factory=dict)
    learn_seconds: float = 0.0
    rank_seconds: float = 0.0
    # Seconds in the product layer's decoration (rows, artwork), not counted in rank_seconds.
    product_seconds: float = 0.0
    # A/B experiments' per-arm, per-user tallies (None without experiments).
    experiments: ExperimentTallies | None = None


def label_lists(last_event: dict[str, dict[str, Any]],
                latest_applied: Mapping[str, dict[str, Any]],
                duplicates: Sequence[dict[str, Any]],
                profiles: Mapping[str, StoredProfile]) -> None:
    """Which event each user's list is made for (its ``event_id`` and ``event_ts``): the
    latest event of theirs that the state reflects. ``last_event`` (user -> their last
    event in the batch, in the order users first appear) is changed in place.

    A user with an event applied in this batch: the latest applied (a duplicate after it
    changes nothing). A user whose events were all duplicates (a redelivery after a crash,
    a producer's retry): the one that was applied last, found by its digest
    (``StoredProfile.last_event_digest``); if none of them was, their state went on to
    later events, whose lists say so, and this batch makes no list for them (one labelled
    with an older event would say the list reflects less than it does, and go backwards in
    ``event_ts``)."""
    for uid, event in latest_applied.items():
        last_event[uid] = event
    if not duplicates:
        return
    only_duplicates: dict[str, list[dict[str, Any]]] = {}
    for event in duplicates:
        uid = event["user_id"]
        if uid not in latest_applied:
            only_duplicates.setdefault(uid, []).append(event)
    for uid, events in only_duplicates.items():
        digest = profiles[uid].last_event_digest
        if digest is None:  # not known (no stored state): their last duplicate, as is
            continue
        latest = [e for e in events if event_digest(e["event_id"]) == digest]
        if latest:
            last_event[uid] = latest[-1]
        else:
            del last_event[uid]


def learn_and_rank(
    events: Sequence[dict[str, Any]],
    applied: Sequence[bool],
    profiles: dict[str, StoredProfile],
    model: Hybrid,
    *,
    top_n: int,
    history_cap: int,
    model_version: str,
    clock: Callable[[], float] = time.time,
    experiments: ExperimentConfig | None = None,
    product: ProductLayer | None = None,
) -> RankedBatch:
    """Teach the model the applied events and rank once for every user in the batch.

    Users whose events were all duplicates (a redelivery) are re-ranked too: the
    previous run may have crashed after writing state but before emitting. Each list is
    labelled with the latest event its user's state reflects (:func:`label_lists`).
    ``product``
    (``streams.product``) learns from the applied events too and adds rows and artwork.
    """
    out = RankedBatch(recall={m: [0, 0] for m in RECALLED_MODELS},
                      recall_new_titles={m: [0, 0] for m in RECALLED_MODELS})
    xb = ExperimentBatch(experiments, model, RECALL_K, ENGAGEMENT_TYPES) if experiments else None
    started = time.perf_counter()
    last_event: dict[str, dict[str, Any]] = {}
    recall_checked: set[str] = set()
    learned_events: list[tuple[str, float, float, list[tuple[str, float]]]] = []
    # Hot loop (every event of the batch): the outputs it fills, bound once.
    by_type, event_times = out.applied_by_type, out.event_times
    learned, recall, recall_new = learned_events.append, out.recall, out.recall_new_titles
    # Titles the catalogue removed: events naming one change the user's state, but the
    # model does not learn them (learning would bring the title back into every list).
    removed = model.removed_titles
    latest_applied: dict[str, dict[str, Any]] = {}
    duplicates: list[dict[str, Any]] = []
    for event, is_new in zip(events, applied, strict=True):
        uid = event["user_id"]
        last_event[uid] = event
        if not is_new:
            out.duplicates += 1
            duplicates.append(event)
            continue
        latest_applied[uid] = event
        kind = event["type"]
        by_type[kind] = by_type.get(kind, 0) + 1
        ts = event["ts"]
        event_times.append(ts)
        stored = profiles[uid]
        if xb is not None:
            xb.observe(event, stored)
        profile = stored.profile
        title = event.get("title_id")
        if title is not None and kind in ENGAGEMENT_TYPES and uid not in recall_checked:
            recall_checked.add(uid)
            new_title = title not in profile.completed and all(
                t != title for t, _ in profile.history)
            for name, titles in stored.last_lists.items():
                if name in recall:
                    hit = title in titles
                    recall[name][1] += 1
                    recall[name][0] += hit
                    if new_title:
                        recall_new[name][1] += 1
                        recall_new[name][0] += hit
        y = event_feedback(profile, event)
        # event_feedback is 0 for an event without a title, so the title test changes
        # nothing but tells the type checker the title is a str.
        if y != 0.0 and title is not None and title not in removed:
            # The history as it is just before this event; learned as one minibatch.
            learned((title, y, ts, profile.history[:MAX_HISTORY]))
        if product is not None:
            product.observe(event, y, stored)
        apply_event(profile, event, y, history_cap)
    label_lists(last_event, latest_applied, duplicates, profiles)
    if learned_events:
        learn_many(model, *zip(*learned_events, strict=True))
    learn_end = time.perf_counter()
    out.learn_seconds = learn_end - started

    popular = [t for t, _ in model.trending.top(RECALL_K)]
    if product is not None:  # recent searches as weak positives, for this ranking only
        for uid in last_event:
            product.adjust_profile(profiles[uid].profile)
    # Every user is ranked in one vectorised call (models.batched); with experiments, one
    # call per variant (streams.experiment_batch).
    variant_lists = xb.recommend_all(profiles, last_event, top_n) if xb is not None else {}
    ranked = None if xb is not None else rank_many(
        model, [profiles[uid].profile for uid in last_event], top_n,
        [event["ts"] for event in last_event.values()])
    if product is not None:  # every user's rows and artwork at once; decorate hands them out
        decorating = time.perf_counter()
        product.prepare_pages([
            (uid, profiles[uid], ranked[i] if ranked is not None else variant_lists[uid], event,
             xb.row_policy(uid) if xb is not None else "learned")
            for i, (uid, event) in enumerate(last_event.items())])
        out.product_seconds += time.perf_counter() - decorating
    batch_lists = None if ranked is None else iter(ranked)
    for uid, event in last_event.items():
        stored = profiles[uid]
        recs: Any
        if batch_lists is not None:  # (title_id, score rounded to 6 places, reason)
            recs = next(batch_lists)
            items = [{"title_id": t, "score": s, "reason": r} for t, s, r in recs]
            listed = [t for t, _, _ in recs[:RECALL_K]]
        else:
            recs = variant_lists[uid]
            items = [{"title_id": r.title_id, "score": round(r.score, 6), "reason": r.reason}
                     for r in recs]
            listed = [r.title_id for r in recs[:RECALL_K]]
        message = {
            "user_id": uid,
            "ts": clock(),
            "event_id": event["event_id"],
            "event_ts": event["ts"],
            "model_version": model_version,
            "items": items,
        }
        lists = {
            "streamrec": listed,
            "popularity": [t for t in popular if t not in stored.profile.completed][:RECALL_K],
        }
        if xb is not None:
            xb.annotate(uid, recs, message, lists, stored)
        if product is not None:  # rows and artwork added, and the message encoded
            decorating = time.perf_counter()
            value = product.encode(message, stored, recs, event,
                                   row_policy=xb.row_policy(uid) if xb is not None else "learned")
            out.product_seconds += time.perf_counter() - decorating
        else:
            value = orjson.dumps(message)
        out.recommendations.append((uid.encode(), value))
        out.last_lists[uid] = orjson.dumps(lists)
    if xb is not None:
        out.experiments = xb.tallies
    out.rank_seconds = time.perf_counter() - learn_end - out.product_seconds
    return out
