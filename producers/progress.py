"""Progress for long runs: a redrawn bar on a terminal, plain periodic lines otherwise.

Logs and CI output must stay readable, so carriage-return redraws are used only when the
stream is a TTY.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# Redraw interval on a terminal, seconds: smooth enough, cheap enough.
TTY_INTERVAL_S = 0.2
# Interval between plain progress lines when not on a terminal, seconds.
PLAIN_INTERVAL_S = 5.0
BAR_WIDTH = 24


class Progress:
    """Reports ``done`` units of work, their rate and, given a fraction, the ETA.

    Parameters
    ----------
    label
        Command name shown at the start of each line.
    stream
        Where to write (stderr by default, so stdout stays for results).
    """

    def __init__(self, label: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = TTY_INTERVAL_S if self.tty else PLAIN_INTERVAL_S
        self._clock = clock
        self.started = clock()
        self._next = self.started + self.interval_s
        self._drawn = False

    def update(self, done: int, fraction: float | None, detail: str = "") -> None:
        """Report ``done`` events so far; draws only when the interval has passed."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self.interval_s
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = ""
        if fraction is not None and 0 < fraction < 1:
            eta = f" ETA {_duration(elapsed * (1 - fraction) / fraction)}"
        if self.tty:
            filled = int(BAR_WIDTH * min(max(fraction or 0.0, 0.0), 1.0))
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            percent = f"{100 * fraction:5.1f}% " if fraction is not None else ""
            self.stream.write(f"\r{self.label} [{bar}] {percent}{done:,} events "
                              f"{rate:,.0f} events/s{eta} {detail}\x1b[K")
            self._drawn = True
        else:
            percent = f" ({100 * fraction:.1f}%)" if fraction is not None else ""
            self.stream.write(f"{self.label}: {done:,} events{percent}, {rate:,.0f} events/s"
                              f"{eta}{', ' + detail if detail else ''}\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line without garbling the bar."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
            self._next = 0.0  # redraw the bar on the next update
        self.stream.write(text + "\n")

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
