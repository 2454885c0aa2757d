"""Checks on the files a command will write, made before the work rather than after it."""

from __future__ import annotations

import os

from streamrec.exceptions import ConfigError


def check_output_file(path: str, option: str) -> None:
    """Raise a one-line :class:`ConfigError` now if ``path`` (given with ``option``) cannot
    be written: a demo, bench or replay that runs for minutes must not end in a traceback.

    Examples
    --------
    >>> try:
    ...     check_output_file("/nonexistent-dir/r.json", "--report")
    ... except ConfigError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    its directory /nonexistent-dir does not exist (create it first: mkdir -p /nonexistent-dir)
    """
    folder = os.path.dirname(path) or "."
    what = "the report" if option == "--report" else option
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path} is a directory; name a file in it, "
                          f"e.g. {os.path.join(path, 'report.json')}")
    if not os.path.isdir(folder):
        raise ConfigError(f"cannot write {what} {path}: its directory {folder} does not "
                          f"exist (create it first: mkdir -p {folder})")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write {what} {path}: permission denied")
