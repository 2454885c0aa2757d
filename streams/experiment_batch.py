"""The experiments' part of one batch: serve each user's variant, tally what happened.

``streams.batch.learn_and_rank`` makes one :class:`ExperimentBatch` per batch and calls

* :meth:`ExperimentBatch.observe` for every applied event (before it changes the
  profile), which tallies the event against the list last served to the user;
* :meth:`ExperimentBatch.recommend_all` once, which ranks every touched user by their
  deciding variant, and :meth:`ExperimentBatch.annotate` per user, which labels the
  message.

What is measured, per user, in every experiment the user is enrolled in (event time at
or after the experiment's start and before its end), against the list last served to
that user, if it was served while the user was in the same arm (not before the
experiment started, nor in another arm before the experiments file changed):

=================  ===================================================================
``recall_tests``   the user's first engagement (play, resume, complete, click) in a
                   batch; ``recall_hits``: its title was in the top ``k`` served
``impressions``    ``impression`` events of a title in the served list
``clicks``         ``click`` events on a title in the served list
``plays``          ``play`` events of a title in the served list (plays started)
``watch_s``        seconds watched of served titles: position at ``stop``/``complete``
                   minus the position the viewing started from (its ``play``, or the
                   previous ``stop``)
``completions``    completions (``complete``, or stopped at >= 95%) of served titles,
                   one per viewing (a pause at 96% then ``complete`` is one)
=================  ===================================================================

A viewing can span batches (a worker that keeps up takes a few events at a time), so
where each open viewing started, and whether it was completed, is kept per user in the
stored lists (``VIEWINGS``, the ``VIEWINGS_CAP`` most recent titles): a viewing counts the
same wherever the batch boundaries fall.

Only applied events are tallied (redeliveries are recognised by ``event_id`` before this
runs), so a tally is never counted twice. The pure part stops here:
``streams.experiment_store`` writes the tallies to Redis once per batch.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.hybrid import Hybrid, Recommendation
from streams.experiments import Experiment, ExperimentConfig, Variant, deciding
from streams.profile import is_completion
from streams.rows import PLAYBACK_TYPES
from streams.state import StoredProfile
from streams.variants import VariantRanker

# Per-user measures, in the order they are stored (streams.experiment_store).
MEASURES = ("recall_tests", "recall_hits", "impressions", "clicks", "plays", "watch_s",
            "completions")
_INDEX = {name: i for i, name in enumerate(MEASURES)}
# The key of the full served list in the user's stored "last lists".
SERVED = "served"
# The key of {experiment: variant} for every experiment the user was in when that list was
# served: a list served before an experiment started, or in another arm before the file
# changed, is not that arm's to measure.
SERVED_BY = "served_by"
# The key of the user's open viewings there: flat [title, start position (s), completed
# (0/1), ...], oldest first.
VIEWINGS = "viewings"
# Most viewings remembered per user: the most recent titles. A client starting a new
# title in every event must not grow a user's state without bound; 20 titles being
# watched at once is far beyond a viewer's habits, and an evicted viewing only counts
# from its last resume point if it ends later.
VIEWINGS_CAP = 20


@dataclass
class ExperimentTallies:
    """One batch's tallies: (experiment, variant) -> user -> deltas (MEASURES order)."""

    users: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)
    # (experiment, variant) -> recommendation messages emitted in this batch.
    lists: dict[tuple[str, str], int] = field(default_factory=dict)
    # The latest event time applied in this batch: how far the stream has gone, which
    # tells the report whether an experiment's end has come (ends are in event time).
    latest_ts: float | None = None

    def __bool__(self) -> bool:
        return bool(self.users) or bool(self.lists) or self.latest_ts is not None

    def totals(self) -> dict[tuple[str, str], list[float]]:
        """Per-arm sums of the deltas (for the Prometheus counters)."""
        out = {}
        for arm, by_user in self.users.items():
            sums = [0.0] * len(MEASURES)
            for deltas in by_user.values():
                for i, d in enumerate(deltas):
                    sums[i] += d
            out[arm] = sums
        return out


class ExperimentBatch:
    """Per-batch state of the experiments hook (pure; no I/O).

    Parameters
    ----------
    config
        The experiments.
    model
        The shared hybrid (already taught this batch's events when ranking starts).
    recall_k
        List length for online recall.
    engagement
        Event types that count as engaging with a title.
    """

    def __init__(self, config: ExperimentConfig, model: Hybrid, recall_k: int,
                 engagement: Collection[str]) -> None:
        self.config = config
        self.recall_k = recall_k
        self.engagement = engagement
        self.tallies = ExperimentTallies()
        self._ranker = VariantRanker(model)
        self._recall_checked: set[str] = set()
        # user -> title -> [position the viewing's current stretch started from, whether
        # it was completed]: the stored viewings, updated by this batch's events.
        self._viewings: dict[str, dict[str, list[Any]]] = {}
        self._deciding: dict[str, tuple[Experiment, Variant] | None] = {}
        self._enrolled: dict[str, list[tuple[Experiment, Variant]]] = {}
        self._assigned: dict[str, list[tuple[Experiment, Variant]]] = {}
        self._users: dict[str, tuple[list[list[Any]], tuple[list[str], set[str]]]] = {}

    def _assigned_to(self, uid: str) -> list[tuple[Experiment, Variant]]:
        """The user's variant in every experiment (hashed once per batch)."""
        assigned = self._assigned.get(uid)
        if assigned is None:
            assigned = self._assigned[uid] = [(e, e.assign(uid))
                                              for e in self.config.experiments]
        return assigned

    def _enrolments(self, uid: str, ts: float) -> list[tuple[Experiment, Variant]]:
        """The user's variants in the experiments running at ``ts``."""
        return [pair for pair in self._assigned_to(uid) if pair[0].running(ts)]

    # -- measuring ---------------------------------------------------------------------------
    def observe(self, event: dict[str, Any], stored: StoredProfile) -> None:
        """Tally one applied event (call before the event is applied to the profile)."""
        uid = event["user_id"]
        user = self._users.get(uid)
        if user is None:
            user = self._users[uid] = self._user(uid, stored)
        slots, served = user
        deltas = self._deltas(event, stored, served) if "title_id" in event else None
        ts = event["ts"]
        if self.tallies.latest_ts is None or ts > self.tallies.latest_ts:
            self.tallies.latest_ts = ts
        for slot in slots:
            experiment, variant, row, served_here = slot
            if not experiment.running(ts):
                continue
            if row is None:
                # Enrolled from its first event after the start, even with nothing to count.
                row = slot[2] = self.tallies.users.setdefault(
                    (experiment.name, variant.name), {}).setdefault(uid, [0.0] * len(MEASURES))
            if deltas is not None and served_here:
                for i, d in enumerate(deltas):
                    row[i] += d

    def _user(self, uid: str, stored: StoredProfile
              ) -> tuple[list[list[Any]], tuple[list[str], set[str]]]:
        """Per batch and user: a slot per experiment ``[experiment, variant, row,
        served_here]`` (row: the user's deltas in that arm, once enrolled; served_here:
        whether the served list was made while the user was in this arm) and the served
        list."""
        served_by: Any = stored.last_lists.get(SERVED_BY)
        # Lists stored before SERVED_BY was kept count as served in the user's arms.
        slots = [[e, v, None, served_by is None or served_by.get(e.name) == v.name]
                 for e, v in self._assigned_to(uid)]
        listed = stored.last_lists.get(SERVED) or []
        return slots, (listed, set(listed))

    def _deltas(self, event: dict[str, Any], stored: StoredProfile,
                served: tuple[list[str], set[str]]) -> list[float] | None:
        title = event["title_id"]
        listed, members = served
        kind = event["type"]
        uid = event["user_id"]
        deltas: list[float] | None = None
        if kind in self.engagement and listed and uid not in self._recall_checked:
            self._recall_checked.add(uid)
            deltas = [0.0] * len(MEASURES)
            deltas[_INDEX["recall_tests"]] = 1.0
            if title in listed[: self.recall_k]:
                deltas[_INDEX["recall_hits"]] = 1.0
        watched, completed = self._view(event, stored)
        if title not in members:
            return deltas
        deltas = deltas or [0.0] * len(MEASURES)
        if kind == "impression":
            deltas[_INDEX["impressions"]] = 1.0
        elif kind == "click":
            deltas[_INDEX["clicks"]] = 1.0
        elif kind == "play":
            deltas[_INDEX["plays"]] = 1.0
        deltas[_INDEX["watch_s"]] = watched
        deltas[_INDEX["completions"]] = completed
        return deltas

    def _view(self, event: dict[str, Any], stored: StoredProfile) -> tuple[float, float]:
        """Follow the event's viewing: seconds watched that it ends (``stop``/``complete``)
        and 1.0 if it first completes the viewing."""
        kind = event["type"]
        if kind not in PLAYBACK_TYPES:
            return 0.0, 0.0
        uid, title = event["user_id"], event["title_id"]
        viewings = self._viewings.get(uid)
        if viewings is None:
            viewings = self._viewings[uid] = stored_viewings(stored)
        viewing = viewings.pop(title, None)  # re-inserted last: the most recent
        if kind == "play":
            viewing = [float(event.get("position_s") or 0.0), False]
        elif viewing is None:  # its play is older than what is remembered: resume point
            viewing = [stored.in_progress.get(title, (0.0, 0.0, 0.0))[0], False]
        watched = 0.0
        if kind in ("stop", "complete"):
            end = event.get("position_s")
            if end is None or (kind == "complete" and not end):
                end = event.get("duration_s") or viewing[0]
            watched = max(0.0, float(end) - viewing[0])
            viewing[0] = float(end)  # a resume after a stop watches on from here
        completed = 0.0
        if is_completion(event) and not viewing[1]:
            viewing[1] = True
            completed = 1.0
        viewings[title] = viewing
        if len(viewings) > VIEWINGS_CAP:
            del viewings[next(iter(viewings))]
        return watched, completed

    # -- serving -------------------------------------------------------------------------------
    def recommend_all(self, profiles: Mapping[str, StoredProfile],
                      last_event: Mapping[str, dict[str, Any]], n: int
                      ) -> dict[str, list[Recommendation]]:
        """Every touched user's list, ranked by their deciding variant; users of the same
        variant are ranked together (one vectorised call for the hybrid and its views)."""
        groups: dict[int, tuple[Variant | None, list[str]]] = {}
        for uid, event in last_event.items():
            enrolments = self._enrolled[uid] = self._enrolments(uid, event["ts"])
            decision = self._deciding[uid] = deciding(enrolments)
            variant = decision[1] if decision is not None else None
            # Every "default" variant ranks alike: one group for all of them.
            key = 0 if variant is None or not variant.changes_model else id(variant)
            groups.setdefault(key, (None if key == 0 else variant, []))[1].append(uid)
        out: dict[str, list[Recommendation]] = {}
        for variant, uids in groups.values():
            events = [last_event[u] for u in uids]
            lists = self._ranker.recommend_many(
                variant, [profiles[u].profile for u in uids], n, [e["ts"] for e in events],
                [e["event_id"] for e in events])
            out.update(zip(uids, lists, strict=True))
        return out

    def row_policy(self, uid: str) -> str:
        """How the user's homepage rows are ordered (their deciding variant's policy)."""
        decision = self._deciding.get(uid)
        return decision[1].row_policy if decision is not None else "learned"

    def annotate(self, uid: str, recs: list[Recommendation], message: dict[str, Any],
                 lists: dict[str, Any], stored: StoredProfile) -> None:
        """Label the message with the user's experiment and variant, and remember the
        full served list and the open viewings (for the next batch's tallies)."""
        decision = self._deciding.get(uid)
        if decision is None:
            return
        experiment, variant = decision
        message["experiment"] = experiment.name
        message["variant"] = variant.name
        message["experiments"] = {e.name: v.name for e, v in self._enrolled[uid]}
        lists[SERVED] = [r.title_id for r in recs]
        lists[SERVED_BY] = message["experiments"]
        viewings = self._viewings.get(uid)
        if viewings is None:  # no playback in this batch: keep what was stored
            lists[VIEWINGS] = stored.last_lists.get(VIEWINGS) or []
        else:
            lists[VIEWINGS] = [x for title, (start, done) in viewings.items()
                               for x in (title, start, int(done))]
        counts = self.tallies.lists
        for e, v in self._enrolled[uid]:
            counts[(e.name, v.name)] = counts.get((e.name, v.name), 0) + 1


def stored_viewings(stored: StoredProfile) -> dict[str, list[Any]]:
    """The user's open viewings as stored by :meth:`ExperimentBatch.annotate`:
    title -> [start position, completed], oldest first."""
    flat: Any = stored.last_lists.get(VIEWINGS) or []
    return {title: [float(start), bool(done)]
            for title, start, done in zip(flat[::3], flat[1::3], flat[2::3], strict=False)}
