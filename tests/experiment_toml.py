"""Experiment configurations for tests, as the TOML a user writes."""

from __future__ import annotations

DEFAULT = '"default"'
RANDOM = '"random"'


def two_arms(name: str, a: tuple[str, str] = ("a", DEFAULT),
             b: tuple[str, str] = ("b", DEFAULT)) -> str:
    """One experiment splitting traffic evenly between two variants, each given as
    ``(variant name, model as TOML)``; the defaults make an A/A experiment."""
    arms = "".join(f'[[experiment.variant]]\nname = "{arm}"\nshare = 0.5\nmodel = {model}\n'
                   for arm, model in (a, b))
    return f'[[experiment]]\nname = "{name}"\n{arms}'
