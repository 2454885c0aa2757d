"""The ``streamrec`` command line: one console script, one subcommand per task.

Each subcommand lives in the module that does the work, which provides
``add_arguments(parser)`` and ``run(args, settings) -> int``; heavy imports stay inside
``run`` so ``streamrec --help`` is quick. Mistakes get one line on stderr and exit code 2;
failures of Kafka or Redis get one line and exit code 1; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any, NoReturn

from streamrec.exceptions import ConfigError, StreamrecError, Terminated
from streamrec.settings import Settings

# name -> (module, one-line help). The module provides add_arguments() and run().
COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("streamrec.broker_cmd", "run the embedded Kafka-protocol broker"),
    "worker": ("streams.worker", "run the stream processor (faust app + batched events path)"),
    "simulate": ("producers.simulator", "generate a catalogue and viewing sessions"),
    "replay": ("producers.replay", "replay recorded events into Kafka"),
    "record": ("consumers.record", "capture a topic to a JSONL file"),
    "tail": ("consumers.tail", "print what arrives on a topic"),
    "sink": ("consumers.sink", "keep each user's latest recommendations in Redis"),
    "recs": ("consumers.inspect", "print a user's latest recommendations"),
    "features": ("consumers.inspect", "print a user's feature state"),
    "demo": ("streamrec.demo", "run everything on embedded services and summarise"),
    "evaluate": ("streamrec.evaluate", "prequential evaluation of the models on a stream"),
    "bench": ("streamrec.bench", "measure throughput, latency and memory"),
    "evaluate-artwork": ("streamrec.evaluate_artwork",
                         "replay estimate of the artwork policy's click-through rate"),
    "insights": ("consumers.insights", "most-searched missing titles and fastest-rising titles"),
    "experiment": ("streams.experiments_report",
                   "A/B experiments: `experiment report` says which variant wins"),
}


# Namespace attribute naming the (sub)command whose arguments were not recognised.
_UNRECOGNISED_BY = "_streamrec_unrecognised_by"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, not a usage dump, pointing at the help of
    the command that was given it (``streamrec experiment report --help``)."""

    def error(self, message: str) -> NoReturn:
        self._fail(self.prog, message)

    @staticmethod
    def _fail(prog: str, message: str) -> NoReturn:
        sys.stderr.write(f"{prog}: error: {message} (see {prog} --help)\n")
        sys.exit(2)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        # argparse hands a subcommand's unknown arguments up to the top parser, which
        # reported them as its own; the innermost parser with some returns first.
        if extras and not hasattr(namespace, _UNRECOGNISED_BY):
            setattr(namespace, _UNRECOGNISED_BY, self.prog)
        return namespace, extras

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = self.parse_known_args(args, namespace)
        prog = vars(namespace).pop(_UNRECOGNISED_BY, self.prog)
        if extras:
            self._fail(prog, f"unrecognized arguments: {' '.join(extras)}")
        return namespace


def _selected_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser. Only the selected command's module is imported (keeps start-up fast)."""
    parser = _Parser(
        prog="streamrec",
        description="A streaming, event-driven recommender for a video catalogue.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name != selected:
            continue
        module = importlib.import_module(module_name)
        snake = name.replace("-", "_")
        adder = getattr(module, f"add_{snake}_arguments", None) or module.add_arguments
        adder(command)
        command.set_defaults(func=getattr(module, f"run_{snake}", None) or module.run)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level.upper() != "DEBUG":  # -v shows every retry
        from streamrec.log_repeats import install

        install(logging.getLogger().handlers)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_selected_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    previous = _stop_on_sigterm_as_on_ctrl_c()
    try:
        settings = Settings.from_env(os.environ)
        configure_logging("DEBUG" if args.verbose else settings.log_level)
        return int(args.func(args, settings) or 0)
    except ConfigError as exc:
        sys.stderr.write(f"streamrec {args.command}: error: {exc}\n")
        return 2
    except StreamrecError as exc:
        sys.stderr.write(f"streamrec {args.command}: error: {exc}\n")
        return 1
    except Terminated:
        sys.stderr.write(f"streamrec {args.command}: terminated\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write(f"streamrec {args.command}: interrupted\n")
        return 130
    except BrokenPipeError:
        # `streamrec tail | head`: the reader went away, which is not an error.
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm_as_on_ctrl_c() -> Any:
    """Make SIGTERM raise :class:`Terminated` (a KeyboardInterrupt) in the main thread, so
    that a command stopped by ``docker compose stop`` or ``kill`` flushes, counts and
    reports as on Ctrl-C instead of dying with its buffers (Python's default for SIGTERM
    is to exit at once). Commands with their own handlers (worker, sink, broker) replace
    it. Returns the handler it replaced (None off the main thread, where it does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)


if __name__ == "__main__":
    sys.exit(main())
