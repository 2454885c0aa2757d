"""The prequential protocol: replay a stream through the models, rank before learning.

Positive events (see ``streamrec.evaluation.streams``) in time order: the first 20% are
learned without testing, the next 10% likewise (a validation slice, kept so figures stay
comparable with the literature); on the last 70%, each positive is first *tested* (every
model ranks the candidates for that user, as of just before the event) and then learned.
The candidates are every title seen so far in the stream, minus the titles that user
already interacted with, plus the true title. Every event, tested or not, updates the
user's profile with ``streams.profile.apply_event`` and teaches each model
``learn_one(user, title, y, profile, ts)`` exactly as the worker does.

Before ranking, ``product`` (the worker's product layer, ``streams.product``), when
given, adjusts a copy of the profile as the worker does (recent searches become weak
positives). A model scores the candidates with its vectorised path in one call; a title a model has
never heard of scores ``-inf`` (it cannot recommend it). The hybrid is evaluated on the
list it would actually show (diversified, with its exploration slots) for the first k
places, then by its blended score.

A true title that has never appeared in the stream before is a miss for every model
(``unreachable`` in the report, about a fifth of MovieLens' 5-star events), whatever k:
it would be the only unseen title among the candidates, so a model that favours unknown
titles (a bandit's prior, content features from a catalogue) would find it without
predicting anything. It counts for nothing in recall and NDCG, and comes last in the
ranking MRR reads (``1 / candidates``), as for a model that cannot tell it from any other
candidate. Likewise a true title a model scores ``-inf`` is never a hit: it is not on
the model's list, even when k is at least the number of candidates.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.base import Recommender, UserProfile
from streamrec.evaluation.metrics import Scoreboard, rank_of_true, self_information, top_items
from streamrec.evaluation.streams import LoadedStream, Step, TitleChange
from streams.profile import apply_event

WARMUP_SHARE = 0.2
VALIDATION_SHARE = 0.1


class ProfileAdjuster(Protocol):
    """What the protocol needs of the worker's product layer (``streams.product``)."""

    def add_title(self, title: dict[str, Any]) -> None: ...
    def remove_title(self, title_id: str) -> None: ...
    def adjust_profile(self, profile: UserProfile) -> None: ...


class Contender:
    """A model under evaluation, addressed by the evaluator's title indices."""

    def __init__(self, name: str, model: Recommender, k: int, n_titles: int) -> None:
        self.name = name
        self.model = model
        self.board = Scoreboard(k)
        self.k = k
        # evaluator title index -> the model's item-table row (-1: unknown to the model)
        self._rows = np.full(n_titles, -1, dtype=np.int64)
        self.learn_seconds = 0.0
        self.score_seconds = 0.0
        self.learned = 0
        self.scored = 0

    def add_title(self, index: int, title: dict[str, Any]) -> None:
        self.model.add_title(title)
        self._rows[index] = self.model.item_rows([title["title_id"]])[0]

    def remove_title(self, index: int, title_id: str) -> None:
        self.model.remove_title(title_id)
        self._rows[index] = -1

    def learn(self, index: int, title_id: str, step: Step, profile: UserProfile) -> None:
        started = time.perf_counter()
        self.model.learn_one(step.user_id, title_id, step.y, profile, step.ts)
        self.learn_seconds += time.perf_counter() - started
        self.learned += 1
        if self._rows[index] < 0:
            self._rows[index] = self.model.item_rows([title_id])[0]

    def scores(self, candidates: np.ndarray, profile: UserProfile, ts: float) -> np.ndarray:
        """Scores of ``candidates`` (title indices); the top k are the list the user sees."""
        started = time.perf_counter()
        rows = self._rows[candidates]
        known = rows >= 0
        scores = np.full(len(candidates), -np.inf)
        if known.any():
            scores[known] = self._score_known(rows[known], profile, ts)
        self.score_seconds += time.perf_counter() - started
        self.scored += 1
        return scores

    def _score_known(self, rows: np.ndarray, profile: UserProfile, ts: float) -> np.ndarray:
        list_rows = getattr(self.model, "list_rows", None)
        if list_rows is None:
            return self.model.score_rows(rows, profile, ts)
        # A model that builds lists (diversity, exploration) is judged on its list: the
        # listed titles go first, in list order, then the rest by score.
        scores, listed = list_rows(rows, profile, self.k, ts)
        scores = np.asarray(scores, dtype=np.float64).copy()
        if listed:
            top = float(np.max(scores)) if len(scores) else 0.0
            scores[listed] = top + 1.0 + np.arange(len(listed), 0, -1)
        return scores


@dataclass
class Outcome:
    events: int
    positives: int
    tested: int
    unreachable: int
    titles_seen: int
    seconds: float
    contenders: list[Contender] = field(default_factory=list)
    # The user of each tested event, in test order (every contender's hits line up).
    tested_users: list[str] = field(default_factory=list)


def test_start(positives: int) -> int:
    """Index (among positives) of the first tested one: after the 20% + 10% learned only."""
    return positives * round((WARMUP_SHARE + VALIDATION_SHARE) * 10) // 10


def run(stream: LoadedStream, models: dict[str, Recommender], k: int, history_cap: int = 200,
        progress: Callable[[int, int], None] | None = None,
        product: ProfileAdjuster | None = None) -> Outcome:
    """Replay ``stream`` through ``models`` under the protocol; per-model scoreboards."""
    index: dict[str, int] = {}
    for described in stream.titles:
        index.setdefault(described["title_id"], len(index))
    for step in stream.steps:
        tid = step.title["title_id"] if isinstance(step, TitleChange) else step.title_id
        if tid is not None:
            index.setdefault(tid, len(index))
    n_titles = len(index)
    for name, model in models.items():
        capacity = getattr(model, "capacity", n_titles)
        if n_titles > capacity:
            raise ValueError(f"model {name!r} holds {capacity} titles, the stream has {n_titles}")
    contenders = [Contender(name, model, k, n_titles) for name, model in models.items()]
    for described in stream.titles:
        for c in contenders:
            c.add_title(index[described["title_id"]], described)
        if product is not None:
            product.add_title(described)

    first_tested = test_start(stream.positives)
    seen = np.zeros(n_titles, dtype=bool)
    engaged_users = np.zeros(n_titles)  # users with a positive for the title, for novelty
    users_engaged: set[str] = set()
    profiles: dict[str, UserProfile] = {}
    interacted: dict[str, list[int]] = {}
    positives = tested = unreachable = 0
    tested_users: list[str] = []
    started = time.perf_counter()
    total = len(stream.steps)
    # Progress every 0.1% of the stream (a line every 10% needs a call in every tenth,
    # even of a few dozen steps), at most every 256 steps: a bar redraw is cheap.
    stride = max(1, min(256, total // 1000))
    for n, step in enumerate(stream.steps):
        if progress is not None and n % stride == 0:
            progress(n, total)
        if isinstance(step, TitleChange):
            tid = step.title["title_id"]
            for c in contenders:
                if step.removed:
                    c.remove_title(index[tid], tid)
                else:
                    c.add_title(index[tid], step.title)
            if product is not None:
                if step.removed:
                    product.remove_title(tid)
                else:
                    product.add_title(step.title)
            continue
        profile = profiles.get(step.user_id)
        if profile is None:
            profile = profiles[step.user_id] = UserProfile(step.user_id)
        title_id = step.title_id
        title = index[title_id] if title_id is not None else -1
        if step.positive:
            if positives >= first_tested:
                shown = profile
                if product is not None and profile.search_terms:
                    shown = copy.copy(profile)
                    shown.history = list(profile.history)
                    product.adjust_profile(shown)
                _test(contenders, title, seen, interacted.get(step.user_id, ()), shown,
                      step.ts, engaged_users, len(users_engaged))
                tested += 1
                tested_users.append(step.user_id)
                unreachable += not seen[title]
            positives += 1
            engaged_users[title] += 1
            users_engaged.add(step.user_id)
        if step.y != 0.0 and title_id is not None:
            for c in contenders:
                c.learn(title, title_id, step, profile)
        apply_event(profile, step.event, step.y, history_cap)
        if title >= 0 and step.event["type"] not in ("search", "impression"):
            seen[title] = True
            interacted.setdefault(step.user_id, []).append(title)
    if progress is not None:
        progress(total, total)
    return Outcome(
        events=sum(1 for s in stream.steps if isinstance(s, Step)),
        positives=positives, tested=tested, unreachable=unreachable,
        titles_seen=int(seen.sum()),
        seconds=time.perf_counter() - started, contenders=contenders,
        tested_users=tested_users,
    )


# Seconds each model takes on the ml-latest-small 5-star stream (this machine, one
# process): what spreads the models over processes evenly. A name not listed is taken to
# be a hybrid (an experiment's variant).
EVALUATION_COST = {"streamrec": 29.0, "streamrec-unconstrained": 29.0, "mf": 7.5,
                   "cooccurrence": 6.6, "content": 4.9, "explorer": 2.8, "trending": 1.8,
                   "popularity": 1.3, "random": 1.1, "oracle": 1.5, "oracle_exposure": 1.5,
                   "river-funkmf": 60.0, "river-biasedmf": 60.0}


def split_by_cost(names: list[str], jobs: int) -> list[list[str]]:
    """``names`` in at most ``jobs`` groups of about equal cost (``EVALUATION_COST``),
    the costliest group first; each group keeps the names' order.

    >>> split_by_cost(["streamrec", "popularity", "mf", "cooccurrence"], 2)
    [['streamrec'], ['popularity', 'mf', 'cooccurrence']]
    """
    cost = {n: EVALUATION_COST.get(n, EVALUATION_COST["streamrec"]) for n in names}
    loads: list[float] = [0.0] * max(1, min(jobs, len(names)))
    members: list[set[str]] = [set() for _ in loads]
    for name in sorted(names, key=lambda n: -cost[n]):  # longest first, to the lightest
        i = loads.index(min(loads))
        loads[i] += cost[name]
        members[i].add(name)
    order = sorted(range(len(loads)), key=lambda i: -loads[i])
    return [[n for n in names if n in members[i]] for i in order if members[i]]


def run_jobs(stream: LoadedStream, models: dict[str, Recommender], k: int,
             history_cap: int = 200, progress: Callable[[int, int], None] | None = None,
             product: ProfileAdjuster | None = None, jobs: int = 1) -> Outcome:
    """:func:`run` with the models spread over ``jobs`` processes (forked, each replaying
    the whole stream for its share of the models): the same figures as one process,
    since every model learns and ranks exactly what it would alone. This process runs
    the costliest share and reports progress; the others send back their scoreboards.

    Ctrl-C is this process's to report: the others ignore SIGINT (a terminal sends it
    to all of them) and are terminated when this one stops, for whatever reason."""
    groups = split_by_cost(list(models), jobs)
    if len(groups) <= 1:
        return run(stream, models, k, history_cap, progress, product)
    started = time.perf_counter()
    context = multiprocessing.get_context("fork")
    children: list[tuple[Any, Any]] = []
    try:
        # SIGINT held back while forking: a child ignores it before it can arrive there,
        # and one arriving meanwhile interrupts this process once unblocked.
        with _sigint_blocked():
            for group in groups[1:]:
                receive, send = context.Pipe(duplex=False)
                child = context.Process(target=_run_share, daemon=True, args=(
                    send, stream, {n: models[n] for n in group}, k, history_cap, product))
                child.start()
                send.close()
                children.append((child, receive))
        outcome = run(stream, {n: models[n] for n in groups[0]}, k, history_cap, progress,
                      product)
        shares = {c.name: c for c in outcome.contenders}
        for child, receive in children:
            try:
                kind, payload = receive.recv()
            except EOFError:
                kind, payload = "crash", f"it exited with code {child.exitcode} without a result"
            child.join()
            if kind == "invalid":
                raise ValueError(payload)
            if kind == "crash":
                raise RuntimeError(f"an evaluation process failed:\n{payload}")
            shares.update((c.name, c) for c in payload)
    finally:
        for child, receive in children:
            receive.close()
            if child.is_alive():  # stopped early (Ctrl-C, another share's error)
                child.terminate()
                child.join()
    outcome.contenders = [shares[name] for name in models]
    outcome.seconds = time.perf_counter() - started
    return outcome


@contextlib.contextmanager
def _sigint_blocked() -> Any:
    """SIGINT held pending (POSIX) for the duration; delivered, if sent, on leaving."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _run_share(send: Any, stream: LoadedStream, models: dict[str, Recommender], k: int,
               history_cap: int, product: ProfileAdjuster | None) -> None:
    """One process's share of :func:`run_jobs`: its contenders, without their models.

    Forked with SIGINT blocked: it ignores SIGINT before unblocking it, so Ctrl-C is
    reported once, by the parent, which terminates this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent stops this process with SIGTERM: die at once, not by streamrec.cli's
    # handler (inherited through the fork), which would print a KeyboardInterrupt here.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        outcome = run(stream, models, k, history_cap, None, product)
        for c in outcome.contenders:
            c.model = None  # type: ignore[assignment]  # scoreboards only: nothing to send
        send.send(("ok", outcome.contenders))
    except ValueError as exc:  # a model that cannot hold the stream: one clear line
        send.send(("invalid", str(exc)))
    except Exception:  # a bug: the child's traceback, for the parent to raise
        send.send(("crash", traceback.format_exc()))
    finally:
        send.close()


def _test(contenders: list[Contender], title: int, seen: np.ndarray, interacted: Any,
          profile: UserProfile, ts: float, engaged_users: np.ndarray, users: int) -> None:
    mask = seen.copy()
    if len(interacted):
        mask[interacted] = False
    mask[title] = True
    candidates = np.flatnonzero(mask)
    true_pos = int(np.searchsorted(candidates, title))
    reachable = bool(seen[title])
    for c in contenders:
        scores = c.scores(candidates, profile, ts)
        if not reachable:
            scores[true_pos] = -np.inf  # last in the ranking, off the list
        listed = top_items(candidates, scores, c.k)
        # A title the model cannot score (-inf, NaN) is off its list however short the
        # list of candidates: a miss, not a hit by default when k exceeds them.
        c.board.add(rank_of_true(scores, true_pos), listed,
                    self_information(listed, engaged_users, users),
                    listable=bool(np.isfinite(scores[true_pos])))
