"""Replay's inputs and bookkeeping without a broker: formats, counts, invalid lines,
--strict, --dry-run, the pacing schedule, the record line format and the CLI's errors."""

from __future__ import annotations

import gzip
import json

import orjson
import pytest

from consumers.compare import compare, fingerprint
from producers.pacing import Pacer
from producers.sources import (
    CATALOG,
    EVENTS,
    Source,
    check_source,
    movielens_events,
    unwrap_record,
    wrap_record,
)
from streamrec.cli import main
from streamrec.exceptions import ConfigError
from streamrec.schema import decode_event


def event(i: int, user: str = "u1", kind: str = "play", ts: float = 1.7e9, **extra) -> dict:
    return {"event_id": f"e{i}", "type": kind, "user_id": user, "ts": ts + i,
            "title_id": f"t{i % 3}", **extra}


def write_jsonl(path, records) -> str:
    with open(path, "wb") as handle:
        for record in records:
            handle.write((record if isinstance(record, bytes) else orjson.dumps(record)) + b"\n")
    return str(path)


def records_of(path, fmt=None, kind=EVENTS):
    return list(Source(str(path), check_source(str(path), fmt, kind), kind))


def run_cli(argv, capsys, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# -- formats -------------------------------------------------------------------------------

def test_jsonl_sends_the_original_bytes_keyed_by_user(tmp_path):
    # Unusual but valid spelling: spaces, an integer ts, an unknown extra field.
    line = b'{"event_id": "e1", "type": "play", "user_id": "u9", "ts": 1700000000, ' \
           b'"title_id": "t1", "extra": {"kept": true}}'
    path = write_jsonl(tmp_path / "a.jsonl", [line, event(2, "u8")])
    (n1, key1, value1, ts1, err1), (_, key2, _, _, err2) = records_of(path)
    assert (n1, key1, value1, ts1, err1) == (1, "u9", line, 1.7e9, None)
    assert key2 == "u8" and err2 is None


def test_gzip_reads_the_same_records_as_plain(tmp_path):
    plain = write_jsonl(tmp_path / "a.jsonl", [event(i) for i in range(50)])
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(open(plain, "rb").read()))
    assert records_of(packed) == records_of(plain)


def test_csv_with_a_header_naming_event_fields(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,type,user_id,ts,title_id,position_s,query,device\n"
        "c1,stop,u1,1700000000,t1,120.5,,tv\n"
        'c2,search,u2,1700000001,,,"heat, 1995",web\n'
        "c3,stop,u1,yesterday,t1,10,,tv\n"
        "\n"
        "c4,pause,u3,1700000002,t2,,,tv\n"
    )
    records = records_of(path)
    assert [r[0] for r in records] == [2, 3, 4, 6]  # line numbers; the blank line is not a record
    stop = orjson.loads(records[0][2])
    assert stop == {"event_id": "c1", "type": "stop", "user_id": "u1", "ts": 1.7e9,
                    "title_id": "t1", "position_s": 120.5, "device": "tv"}
    assert orjson.loads(records[1][2])["query"] == "heat, 1995"
    assert records[2][4].reason == "wrong_type" and "ts" in records[2][4].detail
    assert records[3][4].reason == "missing_field"  # a pause needs its position


def test_csv_catalogue_lists_are_pipe_separated(tmp_path):
    path = tmp_path / "titles.csv"
    path.write_text("event_id,type,ts,title_id,name,genres,year\n"
                    "k1,title_added,1700000000,t1,Heat,Crime|Thriller,1995\n")
    (_, key, value, _, error), = records_of(path, kind=CATALOG)
    assert error is None and key == "t1"
    assert orjson.loads(value)["genres"] == ["Crime", "Thriller"]


def test_csv_without_the_required_columns_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,kind,who\n1,play,u1\n")
    with pytest.raises(ConfigError, match="missing event_id, type, user_id, ts"):
        check_source(str(path), None, EVENTS)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("u.data", "1\t31\t2\t900000000\n2\t10\t5\t900000100\nbroken line\n"),
        ("ratings.dat", "1::31::2::900000000\n2::10::5::900000100\nbroken line\n"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.0,900000000\n"
                        "2,10,5.0,900000100\nbroken line\n"),
    ],
)
def test_movielens_layouts_become_viewer_events(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    records = records_of(path)
    valid = [r for r in records if r[4] is None]
    invalid = [r for r in records if r[4] is not None]
    events = [orjson.loads(r[2]) for r in valid]
    assert [(e["user_id"], e["type"]) for e in events] == [
        ("1", "play"), ("1", "stop"), ("1", "rate"),
        ("2", "play"), ("2", "complete"), ("2", "rate")]
    assert events[0]["event_id"] == "ml-1-31-900000000-play"
    assert all(decode_event(r[2]) for r in valid)
    assert len(invalid) == 1 and invalid[0][0] == content.count("\n")  # the last line


def test_movielens_watch_ratio_grows_with_the_rating():
    ratios = [movielens_events("1", "2", r, 9e8)[1]["position_s"] for r in (1, 2, 3, 3.5, 4, 5)]
    assert ratios == sorted(ratios) and ratios[0] < ratios[-1]
    assert [movielens_events("1", "2", r, 9e8)[1]["type"] for r in (3.5, 4)] == \
        ["stop", "complete"]
    # Ids are deterministic: replaying the file again repeats them (duplicates downstream).
    assert movielens_events("1", "2", 4, 9e8) == movielens_events("1", "2", 4, 9e8)


def test_catalogue_topic_validates_the_catalogue_contract(tmp_path):
    title = {"event_id": "k1", "type": "title_added", "ts": 1.7e9, "title_id": "t5",
             "name": "Heat"}
    path = write_jsonl(tmp_path / "c.jsonl", [title, event(1)])
    (_, key, _, _, ok), (_, _, _, _, bad) = records_of(path, kind=CATALOG)
    assert ok is None and key == "t5"
    assert bad.reason == "unknown_type"


def test_record_wrapper_round_trip_keeps_key_and_bytes():
    value = orjson.dumps(event(1, "u1"))
    line = wrap_record(b"someone-else", value, "events", 3, 17, 1234)
    assert b"\n" not in line
    assert unwrap_record(line) == ("someone-else", value)
    binary = wrap_record(b"\xff", b"\x00\x01", "events", 0, 0, None)
    assert unwrap_record(binary) == (b"\xff", b"\x00\x01")


def test_wrapper_lines_replay_with_their_own_key(tmp_path):
    value = orjson.dumps(event(1, "u1"))
    path = write_jsonl(tmp_path / "r.jsonl", [wrap_record(b"k", value, "events", 0, 0, None)])
    (_, key, sent, _, error), = records_of(path)
    assert (key, sent, error) == ("k", value, None)


# -- counts, invalid lines, --strict, --dry-run --------------------------------------------

def test_dry_run_counts_add_up_and_reports_every_invalid_line(tmp_path, capsys, monkeypatch):
    lines = [event(i, f"u{i % 4}") for i in range(20)]
    lines[3] = b'{"event_id": "x", "type": "play"'  # malformed
    lines[7] = {**event(7), "type": "teleport"}
    lines[12] = b"NaN"
    path = write_jsonl(tmp_path / "e.jsonl", lines)
    report = tmp_path / "report.json"
    code, out, err = run_cli(["replay", path, "--dry-run", "--skip", "2", "--end",
                              str(1.7e9 + 18), "--report", str(report)], capsys, monkeypatch)
    assert code == 0
    summary = json.loads(report.read_text())
    assert summary["read"] == 20 and summary["invalid"] == 3
    assert summary["skipped"] == 2 + 2  # --skip 2, and events 18 and 19 are past --end
    assert summary["read"] == summary["produced"] + summary["invalid"] + summary["skipped"] \
        + summary["failed"]
    assert set(summary) >= {"read", "produced", "invalid", "skipped", "failed", "seconds",
                            "events_per_s"}
    for line_no, reason in ((4, "invalid_json"), (8, "unknown_type"), (13, "invalid_json")):
        assert f"{path}:{line_no}: invalid record ({reason})" in err
    assert "nothing sent" in out


def test_a_gzip_is_read_whatever_its_name(tmp_path):
    records = [event(i) for i in range(5)]
    plain = write_jsonl(tmp_path / "e.jsonl", records)
    with open(plain, "rb") as source:
        data = gzip.compress(source.read())
    for name in ("DAY2.JSONL.GZ", "day2_nogz.jsonl"):
        (tmp_path / name).write_bytes(data)
        read = records_of(tmp_path / name)
        assert [r[2] for r in read] == [r[2] for r in records_of(plain)], name
        assert all(r[4] is None for r in read), name


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    bom = b"\xef\xbb\xbf"
    csv_path = tmp_path / "excel.csv"
    csv_path.write_bytes(bom + b"event_id,type,user_id,ts,title_id\ne1,play,u1,1700000000,t1\n")
    (_, key, value, _, error), = records_of(csv_path)
    assert error is None and key == "u1" and orjson.loads(value)["event_id"] == "e1"
    jsonl_path = tmp_path / "bom.jsonl"
    jsonl_path.write_bytes(bom + orjson.dumps(event(1)) + b"\n")
    (_, key, _, _, error), = records_of(jsonl_path)
    assert error is None and key == "u1"


def test_a_flood_of_invalid_lines_is_summarised_and_catalogue_records_get_a_hint(
        tmp_path, capsys, monkeypatch):
    titles = [{"event_id": f"c{i}", "type": "title_added", "ts": 1.7e9, "title_id": f"t{i}",
               "name": f"T{i}"} for i in range(250)]
    path = write_jsonl(tmp_path / "catalog.jsonl", titles)
    report = tmp_path / "r.json"
    code, _, err = run_cli(["replay", path, "--dry-run", "--report", str(report)], capsys,
                           monkeypatch)
    assert code == 0 and json.loads(report.read_text())["invalid"] == 250  # all counted
    shown = [line for line in err.splitlines() if "invalid record (unknown_type)" in line]
    assert len(shown) == 100
    assert all("replay this file with --topic catalog" in line for line in shown)
    assert "more invalid records are counted, not shown" in err


def interrupt_pacer_at(monkeypatch, n: int) -> None:
    """Ctrl-C while the ``n``-th record a paced replay sends waits for its turn."""
    from producers import pacing

    waited = []

    def wait(self, ts, idle=None):
        waited.append(ts)
        if len(waited) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(pacing.Pacer, "wait", wait)


def test_counts_add_up_when_a_paced_replay_is_interrupted(tmp_path, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "e.jsonl", [event(i * 100) for i in range(10)])
    interrupt_pacer_at(monkeypatch, 4)
    report = tmp_path / "r.json"
    code, out, _ = run_cli(["replay", path, "--dry-run", "--speed", "1", "--report",
                            str(report)], capsys, monkeypatch)
    summary = json.loads(report.read_text())
    assert code == 130 and summary["produced"] == 3
    assert summary["read"] == summary["produced"] + summary["invalid"] + summary["skipped"] \
        + summary["failed"]


def test_an_interrupted_replay_says_how_to_go_on_without_duplicates(tmp_path, capsys,
                                                                   monkeypatch):
    lines = [event(i * 100) for i in range(10)]
    lines.insert(2, b"{broken")  # invalid records are counted as read too
    path = write_jsonl(tmp_path / "e.jsonl", lines)
    interrupt_pacer_at(monkeypatch, 5)  # the 5th valid record
    report = tmp_path / "r.json"
    code, _, err = run_cli(["replay", path, "--dry-run", "--speed", "1", "--skip", "1",
                            "--report", str(report)], capsys, monkeypatch)
    assert code == 130
    assert json.loads(report.read_text())["read"] == 6  # 1 skipped, 4 sent, 1 invalid
    assert err.strip().splitlines()[-1] == (
        "streamrec replay: error: interrupted after reading 6 records; to go on from there "
        "without sending any twice, run the same command with --skip 6 instead of --skip 1")
    monkeypatch.undo()
    code, _, _ = run_cli(["replay", path, "--dry-run", "--skip", "6", "--report",
                          str(report)], capsys, monkeypatch)
    summary = json.loads(report.read_text())
    assert code == 0 and summary["produced"] == 5 and summary["invalid"] == 0  # the rest


def test_limit_stops_after_n_records(tmp_path, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "e.jsonl", [event(i) for i in range(100)])
    report = tmp_path / "r.json"
    code, _, _ = run_cli(["replay", path, "--dry-run", "--limit", "30", "--report",
                          str(report)], capsys, monkeypatch)
    summary = json.loads(report.read_text())
    assert code == 0 and summary["produced"] == 30 and summary["read"] == 30


def test_strict_stops_at_the_first_invalid_line(tmp_path, capsys, monkeypatch):
    lines = [event(i) for i in range(10)]
    lines[4] = {**event(4), "ts": "soon"}
    lines[6] = b"{"
    path = write_jsonl(tmp_path / "e.jsonl", lines)
    report = tmp_path / "r.json"
    code, _, err = run_cli(["replay", path, "--dry-run", "--strict", "--report", str(report)],
                           capsys, monkeypatch)
    assert code == 1
    assert f"{path}:5: invalid record (wrong_type)" in err
    assert f"{path}:7:" not in err
    assert "--strict" in err
    summary = json.loads(report.read_text())
    assert summary["read"] == 5 and summary["invalid"] == 1 and summary["produced"] == 4


def test_several_files_in_order_with_line_numbers_per_file(tmp_path, capsys, monkeypatch):
    first = write_jsonl(tmp_path / "1.jsonl", [event(1), b"oops"])
    second = write_jsonl(tmp_path / "2.jsonl", [b"[]", event(2)])
    code, out, err = run_cli(["replay", first, second, "--dry-run"], capsys, monkeypatch)
    assert code == 0
    assert f"{first}:2:" in err and f"{second}:1: invalid record (not_an_object)" in err
    assert "read 4 records" in out and "2 invalid" in out


# -- pacing (a fake clock: the schedule, not the machine, is under test) -------------------

class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def paced_send_times(ts_list, work_s=0.0, **pacer_args):
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep, **pacer_args)
    sent = []
    for ts in ts_list:
        pacer.wait(ts)
        sent.append(clock.now - 100.0)
        clock.now += work_s  # time spent producing the record
    return sent, pacer


def test_speed_scales_the_original_gaps():
    sent, pacer = paced_send_times([0.0, 1.0, 1.5, 11.5], speed=10.0)
    assert sent == pytest.approx([0.0, 0.1, 0.15, 1.15])
    assert max(pacer.lateness_s) == pytest.approx(0.0)


def test_a_paced_replay_knows_the_event_time_it_has_reached_while_it_waits():
    # What the progress line of a paced --start/--end window reports (not the file position).
    clock = FakeClock()
    pacer = Pacer(speed=60.0, clock=clock, sleep=clock.sleep)
    assert pacer.event_time() is None  # nothing sent yet
    pacer.wait(1000.0)
    clock.now += 30.0  # half a minute of waiting for the next record...
    assert pacer.event_time() == pytest.approx(1000.0 + 30 * 60)  # ...is half an hour in
    assert Pacer(rate=10.0).event_time() is None  # a rate alone follows no event clock


def test_schedule_does_not_drift_when_sending_takes_time():
    # 1 ms of work per record, records due every 10 ms: never late, no accumulation.
    sent, pacer = paced_send_times([i * 0.01 for i in range(100)], work_s=0.001, speed=1.0)
    assert sent[-1] == pytest.approx(0.99)
    assert max(pacer.lateness_s) == pytest.approx(0.0)


def test_rate_caps_records_per_second():
    sent, _ = paced_send_times([0.0] * 5, rate=4.0)
    assert sent == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    both, _ = paced_send_times([0.0, 10.0, 10.0], speed=10.0, rate=2.0)
    assert both == pytest.approx([0.0, 1.0, 1.5])


def test_out_of_order_records_go_at_once_and_show_as_late():
    sent, pacer = paced_send_times([0.0, 5.0, 1.0], speed=1.0)
    assert sent == pytest.approx([0.0, 5.0, 5.0])
    assert pacer.lateness_s[2] == pytest.approx(4.0)
    assert pacer.lateness_ms()["max"] == pytest.approx(4000.0)


def test_long_waits_are_sliced_so_the_producer_keeps_polling():
    clock = FakeClock()
    pacer = Pacer(speed=1.0, clock=clock, sleep=clock.sleep)
    polls = []
    pacer.wait(0.0, idle=lambda: polls.append(clock.now))
    pacer.wait(1.0, idle=lambda: polls.append(clock.now))
    assert len(polls) >= 9 and clock.now == pytest.approx(101.0)


# -- comparing recordings ------------------------------------------------------------------

def test_compare_accepts_other_global_order_but_not_other_per_key_order(tmp_path):
    a, b, c = event(1, "u1"), event(2, "u2"), event(3, "u1")
    original = write_jsonl(tmp_path / "o.jsonl", [a, b, c])
    interleaved = write_jsonl(tmp_path / "i.jsonl", [b, a, c])
    swapped = write_jsonl(tmp_path / "s.jsonl", [c, b, a])
    missing = write_jsonl(tmp_path / "m.jsonl", [a, b])
    want = fingerprint([original], EVENTS)
    assert compare(want, fingerprint([interleaved], EVENTS)) == []
    assert "keys differ" in " ".join(compare(want, fingerprint([swapped], EVENTS)))
    assert "expected 3 records, got 2" in compare(want, fingerprint([missing], EVENTS))[0]


# -- usage mistakes ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--speed", "0"], "must be a number > 0 or 'max'"),
        (["--speed", "fast"], "must be a number > 0 or 'max'"),
        (["--rate", "-5"], "must be a number > 0"),
        (["--limit", "0"], "must be a whole number >= 1"),
        (["--skip", "-1"], "must be a whole number >= 0"),
        (["--start", "last tuesday"], "epoch seconds or an ISO 8601"),
        (["--start", "2024-02-01", "--end", "2024-01-01"], "--end must be later"),
        (["--format", "xml"], "invalid choice"),
        (["--format", "movielens"], "not a MovieLens ratings file"),
        (["--report", "/nonexistent-dir/r.json"], "its directory does not exist"),
        (["--report", "/tmp"], "is a directory; name a file in it"),
        (["--start", "nan"], "must be a finite time"),
        (["--end", "inf"], "must be a finite time"),
    ],
)
def test_replay_mistakes_get_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args,
                                                 fragment):
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    code, _, err = run_cli(["replay", path, "--dry-run", *args], capsys, monkeypatch)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("encoding, named", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"),
                                             ("utf-32", "UTF-32")])
def test_a_utf16_file_is_one_line_saying_how_to_convert_it(tmp_path, capsys, monkeypatch,
                                                         encoding, named):
    # What Windows tools write as "Unicode". Read as UTF-8 it was one invalid record per
    # line plus one more (3 lines: "read 4 records", all invalid), and exit 0.
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(event(i)) + "\n" for i in range(3)),
                    encoding=encoding)
    code, out, err = run_cli(["replay", str(path), "--dry-run"], capsys, monkeypatch)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"is {named} text" in err and f"iconv -f {named} -t UTF-8 {path}" in err


@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_export_is_one_line_saying_how_to_convert_it(tmp_path, capsys,
                                                                  monkeypatch, indent):
    # Before: on one line, one "oversized" record (the whole file read into memory);
    # pretty-printed, an invalid record per line; exit 0 either way.
    path = tmp_path / "export.json"
    path.write_text(json.dumps([event(i) for i in range(5)], indent=indent))
    code, out, err = run_cli(["replay", str(path), "--dry-run"], capsys, monkeypatch)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "is one JSON array; replay reads JSON Lines" in err
    assert f"jq -c '.[]' {path} > export.jsonl" in err


def test_a_latin1_line_names_the_byte_and_the_likely_cause(tmp_path, capsys, monkeypatch):
    # Before: "not valid UTF-8 JSON: str is not valid UTF-8: surrogates not allowed: line 1
    # column 1 (char 0)", which named neither the byte nor the encoding.
    path = write_jsonl(tmp_path / "e.jsonl", [event(1), json.dumps(event(2, user="José"),
                                                                   ensure_ascii=False)
                                              .encode("latin-1")])
    code, _, err = run_cli(["replay", path, "--dry-run"], capsys, monkeypatch)
    assert code == 0
    assert (f"{path}:2: invalid record (invalid_json): not UTF-8: byte 0xe9 at offset 50 "
            f"(text saved in another encoding, e.g. Latin-1? convert it to UTF-8)") in err


def test_missing_file_is_one_line_before_anything_is_sent(tmp_path, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "e.jsonl", [event(1)])
    code, out, err = run_cli(["replay", path, str(tmp_path / "nope.jsonl")], capsys,
                             monkeypatch)
    assert code == 2 and "file not found" in err and len(err.strip().splitlines()) == 1
    assert "produced" not in out


def test_record_without_a_broker_says_how_to_get_one(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(["record", "--out", str(tmp_path / "x.jsonl")], capsys, monkeypatch)
    assert code == 2 and "streamrec broker" in err and len(err.strip().splitlines()) == 1


# -- progress ------------------------------------------------------------------------------

class FakeStream:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise(tty):
    from producers.progress import Progress

    clock = FakeClock()
    stream = FakeStream(tty)
    progress = Progress("replay", stream=stream, clock=clock)
    clock.now += 10.0
    progress.update(500_000, 0.5)
    progress.message("f.jsonl:3: invalid record (invalid_json): ...")
    progress.close()
    assert "50,000 events/s" in stream.text and "ETA 10s" in stream.text
    assert ("\r" in stream.text) is tty and ("[" in stream.text) is tty
    if not tty:
        assert stream.text.splitlines()[0].startswith("replay: 500,000 events (50.0%)")


def test_lateness_memory_is_bounded_and_max_is_exact(monkeypatch):
    import producers.pacing

    monkeypatch.setattr(producers.pacing, "LATENESS_SAMPLES", 100)
    sent, pacer = paced_send_times([0.0] * 1000 + [-5.0], speed=1.0)
    assert len(pacer.lateness_s) == 100 and pacer.released == 1001
    assert pacer.lateness_ms()["max"] == pytest.approx(5000.0)


def test_a_type_that_is_a_list_or_object_is_reported_not_a_crash(tmp_path, capsys,
                                                                 monkeypatch):
    lines = [{**event(1), "type": ["play"]}, {**event(2), "type": {"x": 1}}, event(3)]
    path = write_jsonl(tmp_path / "e.jsonl", lines)
    code, out, err = run_cli(["replay", path, "--dry-run"], capsys, monkeypatch)
    assert code == 0 and "Traceback" not in err
    assert err.count("invalid record (unknown_type)") == 2 and "would produce 1" in out
    title = {"event_id": "k", "type": "title_added", "ts": 1.7e9, "title_id": "t",
             "kind": ["movie"]}
    path = write_jsonl(tmp_path / "c.jsonl", [title, {**title, "type": []}])
    assert [r[4].reason for r in records_of(path, kind=CATALOG)] == ["wrong_type",
                                                                     "unknown_type"]
