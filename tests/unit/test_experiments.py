"""Experiments as configuration: stable hashing, shares, and one clear line per mistake."""

from __future__ import annotations

import pytest

from streamrec.cli import main
from streamrec.exceptions import ConfigError
from streams.experiments import changes_since, hash_unit, load, parse

USERS = [f"user-{i}" for i in range(20_000)]


def experiment(name: str, *variants: tuple[str, float, str]) -> str:
    text = f'[[experiment]]\nname = "{name}"\n'
    for variant, share, model in variants:
        text += (f'[[experiment.variant]]\nname = "{variant}"\nshare = {share}\n'
                 f"model = {model}\n")
    return text


def assignments(text: str) -> dict[str, str]:
    (exp,) = parse(text).experiments
    return {user: exp.assign(user).name for user in USERS}


AB = experiment("ab", ("control", 0.5, '"default"'), ("treatment", 0.5, '"random"'))


# ------------------------------------------------------------------------------ hashing

def test_hash_is_stable_uniform_and_independent_between_experiments() -> None:
    # Known value: the hash is blake2b, so it never changes across machines or releases.
    assert hash_unit("ab", "user-1") == hash_unit("ab", "user-1")
    assert round(hash_unit("ab", "user-1"), 12) == round(
        int.from_bytes(__import__("hashlib").blake2b(b"ab\x1fuser-1", digest_size=8)
                       .digest(), "big") / 2**64, 12)
    values = [hash_unit("ab", u) for u in USERS]
    assert all(0.0 <= v < 1.0 for v in values)
    for low in (0.0, 0.25, 0.5, 0.75):  # each quarter holds a quarter of the users
        share = sum(low <= v < low + 0.25 for v in values) / len(values)
        assert abs(share - 0.25) < 0.015
    other = [hash_unit("cd", u) for u in USERS]
    both_low = sum(a < 0.5 and b < 0.5 for a, b in zip(values, other, strict=True))
    assert abs(both_low / len(USERS) - 0.25) < 0.015  # orthogonal experiments


def test_shares_are_respected() -> None:
    text = experiment("split", ("a", 0.2, '"default"'), ("b", 0.3, '"default"'),
                      ("c", 0.5, '"popularity"'))
    counts: dict[str, int] = {}
    for variant in assignments(text).values():
        counts[variant] = counts.get(variant, 0) + 1
    for name, share in {"a": 0.2, "b": 0.3, "c": 0.5}.items():
        assert abs(counts[name] / len(USERS) - share) < 0.015


def test_zero_share_variant_gets_nobody() -> None:
    text = experiment("ramp", ("a", 1.0, '"default"'), ("b", 0.0, '"random"'))
    assert set(assignments(text).values()) == {"a"}


# ------------------------------------------------------- editing the file keeps assignments

def test_changing_a_share_moves_only_the_boundary_users() -> None:
    before = assignments(AB)
    after = assignments(experiment("ab", ("control", 0.4, '"default"'),
                                   ("treatment", 0.6, '"random"')))
    moved = [u for u in USERS if before[u] != after[u]]
    assert all(before[u] == "control" and after[u] == "treatment" for u in moved)
    assert abs(len(moved) / len(USERS) - 0.1) < 0.01


def test_appending_a_variant_from_the_last_ones_share_moves_only_those_users() -> None:
    before = assignments(AB)
    after = assignments(experiment("ab", ("control", 0.5, '"default"'),
                                   ("treatment", 0.3, '"random"'),
                                   ("new", 0.2, '{ exploration = 0.3 }')))
    moved = [u for u in USERS if before[u] != after[u]]
    assert all(before[u] == "treatment" and after[u] == "new" for u in moved)
    assert all(before[u] == "control" for u in USERS if after[u] == "control")
    assert abs(len(moved) / len(USERS) - 0.2) < 0.015


def test_renaming_a_variant_moves_nobody_renaming_the_experiment_reshuffles() -> None:
    before = assignments(AB)
    renamed = assignments(experiment("ab", ("baseline", 0.5, '"default"'),
                                     ("treatment", 0.5, '"random"')))
    assert all((before[u] == "control") == (renamed[u] == "baseline") for u in USERS)
    fresh = assignments(experiment("ab-2", ("control", 0.5, '"default"'),
                                   ("treatment", 0.5, '"random"')))
    changed = sum(before[u] != fresh[u] for u in USERS) / len(USERS)
    assert abs(changed - 0.5) < 0.02


def changes(before: str, after: str) -> list[str]:
    (old,) = parse(before).experiments
    (new,) = parse(after).experiments
    return changes_since(old.snapshot(), new)


def test_a_worker_says_what_an_edit_changed_for_users_already_in() -> None:
    # Results add up by variant name: before, a reordered file (which the README offered as
    # the way to start over) silently mixed every user's old and new variant.
    assert changes(AB, AB) == []
    assert changes(AB, AB.replace("0.5", "0.50")) == []
    swapped = experiment("ab", ("treatment", 0.5, '"random"'), ("control", 0.5, '"default"'))
    (reordered,) = changes(AB, swapped)
    assert reordered.startswith("experiment 'ab': 100.0% of its users are now in another "
                                "variant than when a worker last served it (control -> "
                                "treatment 50.0%, treatment -> control 50.0%); what they "
                                "did so far stays in the old variant's results")
    assert reordered.endswith("rename the experiment to start afresh on fresh users")
    shares = experiment("ab", ("control", 0.4, '"default"'), ("treatment", 0.6, '"random"'))
    assert "10.0% of its users" in changes(AB, shares)[0]
    assert "(control -> treatment 10.0%)" in changes(AB, shares)[0]
    appended = experiment("ab", ("control", 0.5, '"default"'), ("treatment", 0.3, '"random"'),
                          ("new", 0.2, '"popularity"'))
    assert "20.0% of its users" in changes(AB, appended)[0]
    renamed = experiment("ab", ("baseline", 0.5, '"default"'), ("treatment", 0.5, '"random"'))
    assert "(control -> baseline 50.0%)" in changes(AB, renamed)[0]
    tuned = experiment("ab", ("control", 0.5, '"default"'),
                       ("treatment", 0.5, "{ exploration = 0.3 }"))
    assert changes(AB, tuned) == [
        "experiment 'ab': variant 'treatment' now ranks with exploration=0.3 (was random); "
        "its results mix both: rename the experiment to measure the new one alone"]


def test_an_override_variant_is_described_readably() -> None:
    # The report and the worker's log printed a Python dict: weights={'content': 0.6}.
    tuned = experiment("ab", ("control", 0.5, '"default"'), (
        "treatment", 0.5, '{ exploration = 0.2, max_per_genre = 3, rows = "fixed", '
                          "weights = { content = 0.6, trending = 0.1 } }"))
    (ab,) = parse(tuned).experiments
    assert ab.variant("treatment").describe() == (
        "exploration=0.2, max_per_genre=3, rows=fixed, weights.content=0.6, "
        "weights.trending=0.1")
    # A worker that stored the old description sees the same model, not a change.
    before = ab.snapshot()
    before["variants"][1]["model"] = ("exploration=0.2, max_per_genre=3, rows=fixed, "
                                      "weights={'content': 0.6, 'trending': 0.1}")
    assert changes_since(before, ab) == []


def test_start_time_gates_enrolment() -> None:
    text = ('[[experiment]]\nname = "later"\nstart = 2024-05-01T02:00:00+02:00\n'
            + AB.split("\n", 2)[2])
    (later,) = parse(text).experiments
    assert later.start_ts == 1_714_521_600.0  # 2024-05-01T00:00:00Z
    assert not later.started(1_714_521_599.0) and later.started(1_714_521_600.0)
    config = parse(text + experiment("always", ("x", 0.5, '"random"'),
                                     ("y", 0.5, '"popularity"')))
    assert [e.name for e, _ in config.enrolments("u1", 1_714_521_599.0)] == ["always"]
    assert [e.name for e, _ in config.enrolments("u1", 1_714_521_600.0)] == ["later",
                                                                           "always"]
    as_text = text.replace("2024-05-01T02:00:00+02:00", '"2024-05-01T00:00:00Z"')
    assert parse(as_text).experiments[0].start_ts == 1_714_521_600.0


def test_end_time_stops_enrolment() -> None:
    text = ('[[experiment]]\nname = "over"\nend = 2024-05-01T00:00:00Z\n'
            + AB.split("\n", 2)[2])
    config = parse(text + experiment("always", ("x", 0.5, '"random"'),
                                     ("y", 0.5, '"popularity"')))
    over = config.experiments[0]
    assert over.end_ts == 1_714_521_600.0 and over.snapshot()["end_ts"] == over.end_ts
    assert over.running(1_714_521_599.0) and not over.running(1_714_521_600.0)
    assert [e.name for e, _ in config.enrolments("u1", 1_714_521_599.0)] == ["over", "always"]
    assert [e.name for e, _ in config.enrolments("u1", 1_714_521_600.0)] == ["always"]


# ----------------------------------------------------------------------- config mistakes

def _without(text: str, line: str) -> str:
    assert line in text
    return text.replace(line, "", 1)


BAD = [
    ("not toml at all [", "not valid TOML"),
    ("", "declares no experiment"),
    ('title = "x"\n' + AB, "unknown top-level key 'title'"),
    (_without(AB, 'name = "ab"\n'), "experiment #1: missing 'name'"),
    (AB.replace('name = "ab"', 'name = "a b"'), "experiment #1: name must be"),
    (AB + AB, "experiment 'ab': name is used twice"),
    (AB.replace('name = "ab"', 'name = "ab"\ncolour = "red"'), "unknown key 'colour'"),
    (AB.replace("share = 0.5\nmodel = \"random\"", "share = 0.6\nmodel = \"random\""),
     "experiment 'ab': variant shares add up to 1.1, not 1"),
    (AB.replace("share = 0.5\nmodel = \"random\"", "share = -0.5\nmodel = \"random\""),
     "variant 'treatment': share must be a number within 0..1"),
    (AB.replace("share = 0.5\nmodel = \"random\"", 'share = "half"\nmodel = "random"'),
     "variant 'treatment': share must be a number"),
    (AB.replace('"treatment"', '"control"'), "variant 'control': name is used twice"),
    (AB.replace('"random"', '"best"'), "variant 'treatment': model 'best' is not a preset"),
    (AB.replace('"random"', "{ explore = 0.2 }"),
     "variant 'treatment': model override 'explore' is unknown"),
    (AB.replace('"random"', "{ exploration = 1.5 }"),
     "variant 'treatment': model.exploration must be a number within 0..1"),
    (AB.replace('"random"', "{ weights = { magic = 1.0 } }"),
     "model.weights: component 'magic' is unknown"),
    (AB.replace('"random"', "{ weights = { mf = -1.0 } }"), "model.weights.mf must be"),
    (AB.replace('"random"', "{ max_per_genre = 0 }"), "model.max_per_genre must be"),
    (AB.replace('"random"', "{}"), "model table is empty"),
    (AB.replace('"random"', '{ rows = "sorted" }'), "model.rows must be one of 'learned'"),
    (_without(AB, 'model = "random"\n'), "variant 'treatment': missing 'model'"),
    (AB.replace('name = "ab"', 'name = "ab"\nstart = 2024-05-01T00:00:00'),
     "experiment 'ab': start 2024-05-01T00:00:00 has no time zone"),
    (AB.replace('name = "ab"', 'name = "ab"\nstart = "next tuesday"'),
     "experiment 'ab': start 'next tuesday' is not a date-time"),
    (AB.replace('name = "ab"', 'name = "ab"\nend = 2024-05-01'),
     "experiment 'ab': end must be a date-time with a time zone"),
    (AB.replace('name = "ab"', 'name = "ab"\nend = "soon"'),
     "experiment 'ab': end 'soon' is not a date-time"),
    (AB.replace('name = "ab"', 'name = "ab"\nstart = 2024-05-01T00:00:00Z\n'
                'end = 2024-05-01T01:00:00+01:00'),
     "experiment 'ab': end 2024-05-01T00:00:00Z is not after start 2024-05-01T00:00:00Z"),
    (AB.replace('name = "ab"', 'name = "ab"\ncontrol = "nobody"'),
     "experiment 'ab': control 'nobody' is not one of its variants"),
    (AB.replace('name = "ab"', 'name = "ab"\nmetric = "happiness"'),
     "experiment 'ab': metric 'happiness' is unknown"),
    (experiment("solo", ("only", 1.0, '"default"')), "needs at least two variants"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_each_config_mistake_is_one_line_naming_file_experiment_and_field(
        text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, "exp.toml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("exp.toml: ")
    assert fragment in message


def test_missing_file_is_one_line() -> None:
    with pytest.raises(ConfigError, match="STREAMREC_EXPERIMENTS=/nope.toml: no such file"):
        load("/nope.toml")
    assert load(None) is None


# demo and bench start workers that inherit STREAMREC_EXPERIMENTS: they check it first (it
# was "the worker exited at start-up (see .../worker.log)" and exit 1, services started).
@pytest.mark.parametrize("command", [["worker"], ["demo", "--users", "5", "--events", "50"],
                                     ["bench", "--events", "1000"]])
def test_a_bad_file_is_refused_with_one_line_and_exit_2(command, tmp_path, capsys,
                                                         monkeypatch):
    path = tmp_path / "exp.toml"
    path.write_text(AB.replace('"random"', '"best"'))
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAMREC_EXPERIMENTS", str(path))
    assert main(command) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert f"{path}: experiment 'ab': variant 'treatment': model 'best'" in captured.err


def test_report_without_redis_is_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["experiment", "report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "REDIS_URL is not set" in err


def test_the_example_file_is_valid() -> None:
    from pathlib import Path

    config = load(str(Path(__file__).resolve().parents[2] / "examples" / "experiments.toml"))
    assert config is not None and len(config.experiments) >= 2
