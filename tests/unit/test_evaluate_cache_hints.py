"""`streamrec evaluate --cache-hints` scores the hourly per-country forecasts."""

from __future__ import annotations

import json

import orjson

from streamrec.cli import main


def write_plays(path, hours: int = 6) -> None:
    # Every hour, SE plays t0 most, then t1, then t2; a forecast should learn that.
    lines = []
    n = 0
    for hour in range(hours):
        for i in range(60):
            title = f"t{0 if i < 30 else 1 if i < 50 else 2}"
            lines.append({"event_id": f"e{n}", "type": "play", "user_id": f"u{i}",
                          "ts": 1_700_000_000 + hour * 3600 + i, "title_id": title,
                          "position_s": 0.0, "country": "SE"})
            n += 1
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in lines) + b"\n")


def test_cache_hints_are_scored_and_reported(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    write_plays(events)
    code = main(["evaluate", str(events), "--models", "popularity", "--k", "3",
                 "--cache-hints", "--report", str(tmp_path / "out")])
    assert code == 0
    assert "cache hints: recall@3" in capsys.readouterr().out
    hints = json.loads((tmp_path / "out" / "report.json").read_text())["cache_hints"]
    assert hints["hours"] >= 4
    assert hints["recall"] == 1.0  # the same three titles every hour


def test_a_country_spelt_in_two_cases_gets_one_forecast(tmp_path, capsys):
    # Half the events say "se", half "SE": one country's hours, not two half-sized ones.
    events = tmp_path / "events.jsonl"
    write_plays(events)
    lines = events.read_bytes().splitlines()
    mixed = [line.replace(b'"SE"', b'"se"') if i % 2 else line for i, line in enumerate(lines)]
    events.write_bytes(b"\n".join(mixed) + b"\n")
    assert main(["evaluate", str(events), "--models", "popularity", "--k", "3",
                 "--cache-hints", "--report", str(tmp_path / "out")]) == 0
    hints = json.loads((tmp_path / "out" / "report.json").read_text())["cache_hints"]
    assert hints["hours"] == 5  # the 6 hours of SE after the first, as when all say "SE"
    assert hints["recall"] == 1.0


def test_cache_hints_need_our_events(tmp_path, capsys):
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,1,5.0,964982703\n")
    code = main(["evaluate", str(ratings), "--cache-hints"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--cache-hints needs our JSONL events" in err and len(err.strip().splitlines()) == 1
