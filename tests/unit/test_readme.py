"""The README's links within itself lead somewhere (its contents list among them)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_readme_section_names_a_heading():
    text = README.read_text()
    outside_code = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    anchors = {github_anchor(m.group(1))
               for m in re.finditer(r"^#{1,6} (.+)$", outside_code, flags=re.MULTILINE)}
    links = re.findall(r"\]\(#([^)]+)\)", outside_code)
    assert len(links) >= 15  # the contents list alone has one per section
    assert sorted(set(links) - anchors) == []


def command_lines(text: str) -> list[str]:
    """Every line of the README's code blocks (continued lines joined: a trailing ``\\``, or
    an indented ``[`` of a synopsis) and every inline code span, as one line each."""
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            if lines and (lines[-1].endswith("\\") or re.match(r"\s+\[", line)):
                lines[-1] = lines[-1].rstrip("\\") + " " + line.strip()
            else:
                lines.append(line)
    outside = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", outside)]
    return lines


def subcommand_parser(words: list[str]):
    """The argparse parser of ``streamrec WORDS...`` (``experiment report`` included) and
    how many of the words name it."""
    import argparse

    from streamrec.cli import build_parser

    parser, used = build_parser(words[0]), 0
    while used < len(words):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or words[used] not in subparsers[0].choices:
            break
        parser, used = subparsers[0].choices[words[used]], used + 1
    return parser, used


def test_every_option_the_readme_shows_a_command_with_exists():
    """A user copying a README command line gets no "unrecognized arguments": every
    ``--option`` written after ``streamrec COMMAND`` is one of that command's options."""
    from streamrec.cli import COMMANDS

    unknown, checked = [], 0
    for line in command_lines(README.read_text()):
        for match in re.finditer(r"(?:^|[\s$])streamrec +([a-z][a-z-]*)(.*)", line):
            if match.group(1) not in COMMANDS:
                continue  # prose: "`streamrec` is 1.74x it"
            rest = re.split(r"\s#", match.group(2), maxsplit=1)[0]
            words = [match.group(1)] + rest.split()
            parser, used = subcommand_parser(words)
            known = {s for a in parser._actions for s in a.option_strings}
            for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(words[used:])):
                checked += 1
                if option not in known:
                    unknown.append(f"streamrec {' '.join(words[:used])} {option}")
    assert checked >= 100
    assert unknown == []


def test_the_command_table_lists_every_command():
    from streamrec.cli import COMMANDS

    section = README.read_text().split("<!-- commands -->", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)


def test_experiment_names_the_readme_reports_on_are_in_the_example_file():
    """`streamrec experiment report --name X` in the README names an experiment a user who
    starts a worker with examples/experiments.toml has (it named one only a test defined)."""
    import tomllib

    example = ROOT / "examples" / "experiments.toml"
    names = {e["name"] for e in tomllib.loads(example.read_text())["experiment"]}
    shown = re.findall(r"experiment report --name ([\w-]+)", README.read_text())
    assert shown and set(shown) <= names, (shown, names)


def test_the_environment_table_gives_each_variables_real_default():
    from streamrec.settings import ENV_VARS, Settings

    section = README.read_text().split("<!-- env -->", 1)[1].split("\n## ", 1)[0]
    table = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", section, flags=re.MULTILINE))
    defaults = Settings.from_env({})
    wrong = {}
    for variable, (attr, _parse, _doc) in ENV_VARS.items():
        value = defaults
        for part in attr.split("."):
            value = getattr(value, part)
        shown = ("(unset)" if value is None else str(int(value)) if isinstance(value, bool)
                 else str(value))
        if table.get(variable) != shown:
            wrong[variable] = (table.get(variable), shown)
    assert wrong == {}
