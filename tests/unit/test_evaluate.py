"""``streamrec evaluate``: the prequential protocol on hand-made streams with known answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.baselines import Popularity
from models.hybrid import Hybrid
from streamrec import cli
from streamrec.evaluation import protocol, streams
from streamrec.evaluation.metrics import rank_of_true

# Ten 5-star ratings (user, title), one second apart. Positives 1-3 are learned only
# (20% + 10%); 4-10 are tested. Popularity before each tested event, and the answer:
#  4 u4 A: counts A2 B1, candidates {A,B}          -> rank 1
#  5 u4 B: u4 has A, candidates {B}                -> rank 1 (A excluded though more popular)
#  6 u5 C: C never seen before                     -> a miss for every model (rank 3 of A,B,C)
#  7 u5 B: counts A3 B2 C1, u5 has C, cands {A,B}  -> rank 2
#  8 u6 C: counts A3 B3 C1, candidates {A,B,C}     -> rank 3
#  9 u6 A: counts A3 B3 C2, u6 has C, cands {A,B}  -> rank 2: the tie with B counts against A
# 10 u1 B: counts A4 B3 C2, u1 has A, cands {B,C}  -> rank 1
TEN = [("u1", "A"), ("u2", "A"), ("u3", "B"), ("u4", "A"), ("u4", "B"), ("u5", "C"),
       ("u5", "B"), ("u6", "C"), ("u6", "A"), ("u1", "B")]
RANKS = [1, 1, 3, 2, 3, 2, 1]


def write_udata(path: Path, pairs, rating: float = 5.0, extra=()) -> str:
    lines = [f"{u}\t{t}\t{rating}\t{1_000_000_000 + i}" for i, (u, t) in enumerate(pairs)]
    lines += list(extra)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["evaluate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_hand_computed_recall_ndcg_mrr_coverage(tmp_path, capsys):
    data = write_udata(tmp_path / "u.data", TEN)
    code, out, _ = run_cli(capsys, data, "--format", "movielens", "--k", "2",
                           "--models", "popularity", "--report", str(tmp_path / "out"))
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["events"], report["positives"], report["tested"]) == (10, 10, 7)
    assert report["unreachable"] == 1
    got = report["models"]["popularity"]
    hits = [r <= 2 for r in RANKS]
    assert got["recall@2"] == pytest.approx(sum(hits) / 7, abs=1e-6)
    assert got["ndcg@2"] == pytest.approx(
        sum(1 / np.log2(r + 1) for r in RANKS if r <= 2) / 7, abs=1e-6)
    assert got["mrr"] == pytest.approx(sum(1 / r for r in RANKS) / 7, abs=1e-6)
    assert got["coverage"] == pytest.approx(1.0)  # A, B and C were all listed at some point
    assert set(got) == {"recall@2", "ndcg@2", "mrr", "coverage", "novelty"}
    assert "popularity" in out and "recall@2" in out


def test_recall_at_1_and_coverage_follow_k(tmp_path):
    stream = streams.load(write_udata(tmp_path / "u.data", TEN), "movielens")
    outcome = protocol.run(stream, {"popularity": Popularity()}, k=1)
    summary = outcome.contenders[0].board.summary(outcome.titles_seen)
    assert summary["recall@1"] == pytest.approx(3 / 7, abs=1e-6)
    assert summary["coverage"] == pytest.approx(2 / 3, abs=1e-6)  # only A and B top a list


def test_ties_count_against_the_model():
    assert rank_of_true(np.array([0.2, 0.2, 0.2, 0.2]), 3) == 4
    assert rank_of_true(np.array([0.9, 0.2, 0.2, 0.1]), 1) == 3
    assert rank_of_true(np.array([0.9, np.nan, 0.5]), 2) == 3  # NaN never helps


class Constant(Popularity):
    """Gives every title the same score: under the protocol it must never hit."""

    def _score_rows(self, rows, profile, ts):
        return np.ones(len(rows))


def test_a_model_that_cannot_tell_titles_apart_never_hits(tmp_path):
    stream = streams.load(write_udata(tmp_path / "u.data", TEN), "movielens")
    outcome = protocol.run(stream, {"flat": Constant()}, k=1)
    # Every tested event had at least two candidates except event 5 (only B is left).
    assert sum(outcome.contenders[0].board.hits) == 1


@pytest.mark.parametrize(("positives", "first_tested"), [(10, 3), (100, 30), (7, 2), (1, 0)])
def test_first_20_and_next_10_percent_are_learned_without_testing(positives, first_tested):
    assert protocol.test_start(positives) == first_tested


def test_min_rating_selects_the_positive_events(tmp_path):
    pairs = TEN + [("u7", "A"), ("u7", "B")]
    extra = [f"u8\tA\t3.0\t{1_000_000_100}"]
    path = write_udata(tmp_path / "u.data", pairs, rating=4.0, extra=extra)
    assert streams.load(path, "movielens", min_rating=4.0).positives == 12
    assert streams.load(path, "movielens", min_rating=3.0).positives == 13
    with pytest.raises(Exception, match="no positive events"):
        streams.load(path, "movielens", min_rating=5.0)


def test_formats_are_detected(tmp_path):
    udata = write_udata(tmp_path / "u.data", TEN)
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::10::5::978300760\n1::11::4::978300761\n")
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n1,10,5.0,978300760\n")
    other = tmp_path / "plays.csv"
    other.write_text("timestamp,user_id,title_id,rating\n978300760,u1,t1,5\n978300761,u1,t2,5\n")
    events = tmp_path / "events.jsonl"
    events.write_text("")
    assert [streams.detect_format(str(p)) for p in (udata, dat, csv, other, events)] == [
        "movielens", "movielens", "movielens", "csv", "jsonl"]
    loaded = streams.load(str(other))
    assert [(s.user_id, s.title_id) for s in loaded.steps] == [("u1", "t1"), ("u1", "t2")]


def event(i: int, kind: str, user: str, title: str, **fields) -> dict:
    return {"event_id": f"e{i}", "type": kind, "user_id": user, "title_id": title,
            "ts": 1_700_000_000.0 + i, **fields}


def test_jsonl_positives_are_first_engagements_and_profiles_follow_the_worker(tmp_path):
    rows = [
        event(0, "play", "u1", "a"),
        event(1, "complete", "u1", "a", duration_s=100.0),       # same title: not tested
        event(2, "play", "u2", "b"),
        event(3, "stop", "u2", "c", position_s=10.0, duration_s=3600.0),  # abandoned: -1
        event(4, "impression", "u2", "d"),                        # shown, not engaged
        event(5, "play", "u2", "d"),
        event(6, "play", "u1", "a"),                              # a re-watch: y = 1.8
        {"event_id": "c1", "type": "title_added", "ts": 1_700_000_007.0,
         "title_id": "e", "genres": ["Drama"]},
        {"broken": True},
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\nnot json\n")
    stream = streams.load(str(path))
    steps = [s for s in stream.steps if isinstance(s, streams.Step)]
    assert [s.positive for s in steps] == [True, False, True, False, False, True, False]
    assert [s.y for s in steps][-1] == pytest.approx(1.8)
    assert stream.positives == 3 and stream.invalid == 2
    assert any(isinstance(s, streams.TitleChange) for s in stream.steps)
    outcome = protocol.run(stream, {"popularity": Popularity()}, k=10)
    assert (outcome.events, outcome.positives, outcome.tested) == (7, 3, 3)


def test_completed_titles_are_never_candidates(tmp_path):
    # u1 completes "a", then engages with "b": "a" must not be ranked for u1 at all.
    rows = [event(0, "play", "u2", "a"), event(1, "play", "u3", "b"),
            event(2, "complete", "u1", "a", duration_s=60.0), event(3, "play", "u1", "b"),
            event(4, "play", "u4", "a"), event(5, "play", "u4", "b"),
            event(6, "play", "u5", "a"), event(7, "play", "u5", "c"),
            event(8, "play", "u1", "c"), event(9, "play", "u6", "c")]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    stream = streams.load(str(path))
    seen: list[np.ndarray] = []

    class Spy(Popularity):
        def score_rows(self, rows, profile=None, ts=None):
            if profile is not None and profile.user_id == "u1":
                seen.append(np.array(self._items.ids, dtype=object)[rows])
            return super().score_rows(rows, profile, ts)

    protocol.run(stream, {"spy": Spy()}, k=2)
    assert seen and all("a" not in titles for titles in seen)


class LeastPopularFirst(Popularity):
    """Lists the least popular candidate first, whatever its score says."""

    def list_rows(self, rows, profile, n, ts=None):
        scores = self.score_rows(rows, profile, ts)
        return scores, np.argsort(scores, kind="stable")[:n].tolist()


def test_models_that_build_lists_are_judged_on_the_list_they_show(tmp_path):
    # With k=1 the listed title is the least popular candidate: hits at events 5, 7, 8
    # and 9 (see TEN), where ranking by score would hit at 4, 5 and 10.
    stream = streams.load(write_udata(tmp_path / "u.data", TEN), "movielens")
    outcome = protocol.run(stream, {"lister": LeastPopularFirst()}, k=1)
    assert outcome.contenders[0].board.hits == [False, True, False, True, True, True, False]


def test_the_hybrid_runs_under_the_protocol(tmp_path):
    pairs = [(f"u{u}", f"t{(u + k) % 12}") for u in range(12) for k in range(6)]
    stream = streams.load(write_udata(tmp_path / "u.data", pairs), "movielens")
    outcome = protocol.run(stream, {"streamrec": Hybrid(seed=1), "random": Popularity()}, k=3)
    assert outcome.tested == len(pairs) - len(pairs) * 3 // 10
    assert all(len(c.board.hits) == outcome.tested for c in outcome.contenders)


def test_models_spread_over_processes_score_as_in_one(tmp_path):
    pairs = [(f"u{u}", f"t{(u * 7 + k * k) % 15}") for u in range(15) for k in range(6)]
    stream = streams.load(write_udata(tmp_path / "u.data", pairs), "movielens")

    def models():
        return {"streamrec": Hybrid(seed=1), "popularity": Popularity(),
                "lister": LeastPopularFirst()}

    alone = protocol.run_jobs(stream, models(), k=3, jobs=1)
    spread = protocol.run_jobs(stream, models(), k=3, jobs=3)
    assert [c.name for c in spread.contenders] == ["streamrec", "popularity", "lister"]
    for one, many in zip(alone.contenders, spread.contenders, strict=True):
        assert many.board.hits == one.board.hits
        assert many.board.summary(spread.titles_seen) == one.board.summary(alone.titles_seen)
    assert sum(alone.contenders[0].board.hits) > 0  # the comparison is not of empty lists
    # An unknown name (an experiment's variant) is costed as a hybrid: not with streamrec.
    assert protocol.split_by_cost(["a:b", "random", "mf", "streamrec"], 2) == [
        ["a:b", "mf"], ["random", "streamrec"]]


def test_a_model_too_small_in_another_process_is_one_clear_error(tmp_path):
    stream = streams.load(write_udata(tmp_path / "u.data", TEN), "movielens")
    models = {"streamrec": Hybrid(seed=1), "popularity": Popularity(capacity=2)}
    assert protocol.split_by_cost(list(models), 2)[1] == ["popularity"]  # the other one
    with pytest.raises(ValueError, match="'popularity' holds 2 titles, the stream has 3"):
        protocol.run_jobs(stream, models, k=3, jobs=2)


def test_report_files_and_plain_progress_lines(tmp_path, capsys):
    data = write_udata(tmp_path / "u.data", TEN * 5)
    code, out, err = run_cli(capsys, data, "--models", "popularity,random", "--report",
                             str(tmp_path / "r"), "--plot", str(tmp_path / "docs" / "q.png"))
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(report["models"]) == {"popularity", "random"}
    assert report["protocol"]["k"] == 10 and report["protocol"]["min_rating"] == 5.0
    # What to install to reproduce the figures to the last digit.
    assert report["protocol"]["versions"]["numpy"] == np.__version__
    assert (tmp_path / "r" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "docs" / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "evaluating: 100%" in err  # not a terminal: plain lines, no carriage returns
    assert "\r" not in err
    assert out.splitlines()[1].split()[:3] == ["model", "recall@10", "ndcg@10"]


@pytest.mark.parametrize(("argv", "message"), [
    (["missing.csv"], "file not found"),
    (["{data}", "--k", "0"], "--k must be a positive whole number"),
    (["{data}", "--jobs", "0"], "--jobs must be a positive whole number"),
    (["{data}", "--models", "popularity,nope"], "unknown model 'nope'"),
    (["{data}", "--models", ","], "--models is empty"),
    (["{data}", "--format", "jsonl", "--min-rating", "4"], "--min-rating applies to ratings"),
    (["{junk}"], "cannot tell the format"),
    (["{data}", "--catalog", "missing-movies.csv"], "file not found"),
    (["{data}", "--oracle", "300,500"], "--oracle takes USERS,TITLES,SEED"),
    (["{data}", "--plot", "out/plot.txt"], "give a .png, .svg or .pdf"),
    (["{data}", "--report", "{data}"], "is a file, not a directory"),
    (["{data}", "--report", "{data}/out"], "cannot write"),
    (["{data}", "--report", "{tmp}/r", "--plot", "{data}/docs/q.png"], "cannot write"),
    (["{data}", "--plot", "{tmp}/taken.png"], "cannot write"),
])
def test_mistakes_get_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    data = write_udata(tmp_path / "u.data", TEN)
    junk = tmp_path / "junk.bin"
    junk.write_text("hello\n")
    (tmp_path / "taken.png").mkdir()  # a directory where the plot would go
    argv = [a.format(data=data, junk=junk, tmp=tmp_path) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    # One line: refused before the replay (which would have printed progress lines).
    assert len(err.strip().splitlines()) == 1 and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()  # a refused run leaves no directory behind


def test_output_directories_are_checked_but_not_left_behind_by_a_failed_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, str(tmp_path / "missing.csv"), "--report",
                           str(tmp_path / "a" / "b"), "--plot", str(tmp_path / "c" / "q.png"))
    assert code == 2 and "file not found" in err
    assert list(tmp_path.iterdir()) == []


def test_bad_format_choice_is_a_usage_error(tmp_path, capsys):
    data = write_udata(tmp_path / "u.data", TEN)
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", data, "--format", "parquet"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_metric_examples_hold():
    import doctest

    from streamrec.evaluation import compare, metrics

    for module in (metrics, protocol, compare):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0


def test_simulated_stream_with_its_catalogue_and_the_oracles(tmp_path, capsys):
    from producers.simulator import catalog_path_for, generate_events, generate_world

    world = generate_world(40, 60, seed=5)
    events = tmp_path / "sim.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(e) for e in generate_events(world, 3000, seed=5)))
    Path(catalog_path_for(str(events))).write_bytes(
        b"\n".join(orjson.dumps(t) for t in world.titles))
    code, out, _ = run_cli(capsys, str(events), "--models", "popularity", "--oracle", "40,60,5",
                           "--report", str(tmp_path / "r"))
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["protocol"]["catalog"] == catalog_path_for(str(events))
    assert set(report["models"]) == {"popularity", "oracle", "oracle_exposure"}
    assert report["tested"] > 0 and report["models"]["oracle"]["recall@10"] > 0


def test_oracle_ranks_by_the_hidden_affinity():
    import doctest

    from streamrec.evaluation import oracle

    assert doctest.testmod(oracle).failed == 0


# Five 5-star ratings of five different titles: positives 1 is learned only, 2-5 are
# tested, and each of them is the title's first appearance. Event 2 has 2 candidates
# (A, B), event 5 has 5: with k = 10 every candidate fits in the list, yet none of the
# four can be a hit, since no model could have known the title.
FIRST_APPEARANCES = [("u1", "A"), ("u2", "B"), ("u3", "C"), ("u4", "D"), ("u5", "E")]


def test_a_first_appearance_is_a_miss_even_when_k_exceeds_the_candidates(tmp_path, capsys):
    data = write_udata(tmp_path / "u.data", FIRST_APPEARANCES)
    code, out, _ = run_cli(capsys, data, "--k", "10", "--models", "popularity,random",
                           "--report", str(tmp_path / "r"), "--jobs", "2")
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (report["tested"], report["unreachable"]) == (4, 4)
    for name in ("popularity", "random"):
        got = report["models"][name]
        assert (got["recall@10"], got["ndcg@10"]) == (0.0, 0.0)
        # MRR ranks the title last among the candidates (2, 3, 4, 5 of them), as a
        # model that cannot tell it from any other would; never first.
        assert got["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4, abs=1e-6)
    versus = report["comparisons"]["random vs popularity"]
    assert (versus["only_model"], versus["only_baseline"], versus["ratio"]) == (0, 0, None)
    assert out.splitlines()[2].split()[1:3] == ["0.0000", "0.0000"]


class Unknowing(Popularity):
    """Cannot score one title (``-inf``, as for a title a model has never heard of)."""

    def _score_rows(self, rows, profile, ts):
        scores = np.asarray(super()._score_rows(rows, profile, ts), dtype=np.float64)
        scores[np.asarray(self._items.ids, dtype=object)[rows] == "B"] = -np.inf
        return scores


def test_a_title_the_model_cannot_score_is_never_a_hit_whatever_k(tmp_path):
    # Events 5, 7 and 10 of TEN are B (at 5, the only candidate). A model scoring B -inf
    # leaves it off its list, so it did not recommend it: a miss, even at k = 10.
    stream = streams.load(write_udata(tmp_path / "u.data", TEN), "movielens")
    outcome = protocol.run(stream, {"unknowing": Unknowing()}, k=10)
    board = outcome.contenders[0].board
    assert board.hits == [True, False, False, False, True, True, False]


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_ctrl_c_with_jobs_is_reported_once_without_the_workers_tracebacks(tmp_path):
    # 40,000 distinct 5-star ratings of 5,003 titles: seconds of replay, so Ctrl-C lands
    # mid-run. Like a terminal, the signal goes to the whole process group.
    pairs = [(f"u{i % 1999}", f"t{i * 7919 % 5003}") for i in range(40_000)]
    data = write_udata(tmp_path / "u.data", pairs)
    command = [sys.executable, "-m", "streamrec.cli", "evaluate", data, "--models",
               "popularity,random", "--jobs", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        first = process.stderr.readline()  # printed once the worker process is forked
        assert first.startswith("evaluating: 0%"), first
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert process.returncode == 130, out + err
    assert err.count("streamrec evaluate: interrupted") == 1
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    with pytest.raises(ProcessLookupError):  # no worker process left running
        os.killpg(process.pid, 0)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_progress_off_a_terminal_is_a_line_every_10_percent(tmp_path, capsys, jobs):
    # 50 events, far fewer than a replay's usual progress stride: still every tenth.
    data = write_udata(tmp_path / "u.data", TEN * 5)
    code, _, err = run_cli(capsys, data, "--models", "popularity,random", "--jobs", jobs)
    assert code == 0
    shares = [line.split()[1] for line in err.splitlines() if line.startswith("evaluating:")]
    assert shares == [f"{10 * tenth}%" for tenth in range(11)]
