"""``streamrec experiment report``: per-variant metrics, intervals, lift, and the winner.

Reads what workers keep in Redis (``streams.experiment_store``), so it runs from any
machine with ``REDIS_URL`` (and the same ``STREAMREC_APP_ID``)::

    streamrec experiment report --name ranker-test
    streamrec experiment report --json
    streamrec experiment report --running     # leave out ended and removed experiments

The statistics (user-level delta-method variances, confidence sequences that stay valid
however often you look, Bonferroni over treatments) are in ``streams.experiment_stats``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import orjson
import redis

from streamrec.exceptions import ConfigError, StateStoreUnavailable
from streamrec.settings import Settings
from streams.experiment_stats import (
    ALPHA,
    MIN_USERS,
    RATIOS,
    SRM_ALPHA,
    ArmStats,
    compare,
    sample_ratio_p,
    winner,
)
from streams.experiments import METRICS, iso

# Display formats per metric: rates as shares, watch time in seconds.
_FORMAT = {"watch_s_per_impression": "{:.1f}"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    report = sub.add_parser("report", help="per-variant metrics with 95%% intervals, lift "
                                           "against control, and whether there is a winner")
    report.add_argument("--name", default=None, metavar="E",
                        help="only experiment E (default: every experiment in Redis)")
    report.add_argument("--json", action="store_true",
                        help="print JSON (one object per experiment, one per line)")
    report.add_argument("--running", action="store_true",
                        help="leave out experiments that have ended or were removed from "
                             "the experiments file (shown by default, with a final verdict)")


def build(experiment: dict[str, Any], alpha: float = ALPHA) -> dict[str, Any]:
    """The report of one experiment as read by ``read_experiments``: the ``--json`` shape.

    ``{"experiment", "status", "end", "winner", "metric", "control", "alpha",
    "sample_ratio": {"p_value", "mismatch"}, "variants": {name: {"users",
    "share", "model", "lists", <metric>: {"measured_users", "value", "ci_low", "ci_high",
    "lift_vs_control", "lift_ci_low", "lift_ci_high", "p_value"}}}}``; a value that cannot
    be computed yet (no denominator, fewer than ``MIN_USERS`` users measured in an arm, or
    it is control's own lift) is null. ``status`` is ``running``, ``ended`` (its ``end``
    has come, in event time) or ``removed`` (no longer in the experiments file); ``end`` is
    its end time (``2024-06-01T00:00:00Z``) or null.
    """
    arms: dict[str, ArmStats] = {name: stats for name, (stats, _) in experiment["arms"].items()}
    control_name = experiment["control"]
    control = arms.get(control_name)
    treatments = max(1, len(arms) - 1)
    variants: dict[str, Any] = {}
    for spec in experiment["variants"]:
        name = spec["name"]
        stats, lists = experiment["arms"][name]
        entry: dict[str, Any] = {"users": stats.users, "share": spec["share"],
                                 "model": spec["model"], "lists": lists}
        for metric in RATIOS:
            result = compare(stats, None if name == control_name else control, metric,
                             alpha, treatments)
            entry[metric] = {
                "measured_users": stats.measured_users(metric),
                "value": _num(result.value.value if result.value else None),
                "ci_low": _num(result.ci[0] if result.ci else None),
                "ci_high": _num(result.ci[1] if result.ci else None),
                "lift_vs_control": _num(result.lift.value if result.lift else None),
                "lift_ci_low": _num(result.lift_ci[0] if result.lift_ci else None),
                "lift_ci_high": _num(result.lift_ci[1] if result.lift_ci else None),
                "p_value": _num(result.p_value),
            }
        variants[name] = entry
    srm = sample_ratio_p([variants[v["name"]]["users"] for v in experiment["variants"]],
                         [v["share"] for v in experiment["variants"]])
    end_ts = experiment.get("end_ts")
    return {
        "experiment": experiment["name"],
        "status": experiment.get("status", "running"),
        "end": None if end_ts is None else iso(end_ts),
        "winner": winner(arms, control_name, experiment["metric"], alpha),
        "metric": experiment["metric"],
        "control": control_name,
        "alpha": alpha,
        "sample_ratio": {"p_value": _num(srm), "mismatch": srm < SRM_ALPHA},
        "variants": variants,
    }


def _num(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


def verdict(report: dict[str, Any]) -> str:
    """One plain sentence: is there a winner yet? (After a warning, if users are not split
    as the shares say.)"""
    said = _verdict(report)
    if not report["sample_ratio"]["mismatch"]:
        return said
    return (f"sample ratio mismatch: {_split(report)} is not the split the shares say "
            f"(p{_p(report['sample_ratio']['p_value'])}), so the variants' users are not "
            "comparable and no result can be trusted; find why (an edited share or order "
            f"moves users; see the worker's log) and rename the experiment to start afresh\n"
            f"{said}")


def _split(report: dict[str, Any]) -> str:
    return ", ".join(f"{name} {entry['users']} ({entry['share']:g})"
                     for name, entry in report["variants"].items())


def _verdict(report: dict[str, Any]) -> str:
    metric, control, best = report["metric"], report["control"], report["winner"]
    final = report["status"] != "running"
    few = [f"{name}: {entry[metric]['measured_users']}"
           for name, entry in report["variants"].items()
           if entry[metric]["measured_users"] < MIN_USERS]
    if best is None and few and final:
        return (f"final: no winner: it ended before each variant had {MIN_USERS} users "
                f"measured on {metric} ({', '.join(few)}), so they were never compared; "
                "run it again under a new name, for longer")
    if best is None and few:
        return (f"no winner yet: {metric} is compared once each variant has {MIN_USERS} "
                f"users measured ({', '.join(few)}); keep the experiment running")
    if best is None and final:
        return (f"final: no winner: no variant's {metric} differed from {control}'s with 95% "
                "confidence; a longer run, under a new name, could detect smaller "
                "differences")
    if best is None:
        return (f"no winner yet: no variant's {metric} differs from {control}'s with 95% "
                "confidence; keep the experiment running (these intervals stay valid "
                "however often you look)")
    said = "final: winner" if final else "winner"
    if best == control:
        return (f"{said}: {control}, the control: every other variant's {metric} is lower, "
                "and each lift interval excludes 0")
    lift = report["variants"][best][metric]
    return (f"{said}: {best}: {metric} {_pct(lift['lift_vs_control'])} vs {control} "
            f"[{_pct(lift['lift_ci_low'])}, {_pct(lift['lift_ci_high'])}], an interval "
            "that excludes 0")


def _status(report: dict[str, Any]) -> str | None:
    """The line saying the experiment has ended (or when it will), if it has an end."""
    final = "it no longer serves variants nor counts, so its results are final"
    if report["status"] == "removed":
        return f"  ended: no longer in the experiments file; {final}"
    if report["status"] == "ended":
        return f"  ended at {report['end']} (event time); {final}"
    if report["end"] is not None:
        return f"  ends at {report['end']} (event time)"
    return None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def _p(p: float | None) -> str:
    if p is None:
        return "=n/a"
    return "<0.001" if p < 0.001 else f"={p:.3g}"


def _fmt(metric: str, value: float | None) -> str:
    return "n/a" if value is None else _FORMAT.get(metric, "{:.4f}").format(value)


def render(report: dict[str, Any]) -> str:
    lines = [f"experiment {report['experiment']}: decided by {report['metric']}, control "
             f"{report['control']}; 95% confidence sequences (valid at every look)",
             "  sample ratio (users per variant against the shares): "
             f"{'MISMATCH' if report['sample_ratio']['mismatch'] else 'as expected'}, "
             f"p{_p(report['sample_ratio']['p_value'])}"]
    status = _status(report)
    if status is not None:
        lines.insert(1, status)
    for name, entry in report["variants"].items():
        lines.append(f"  {name} ({entry['model']}, share {entry['share']:g}): "
                     f"{entry['users']} users, {entry['lists']} lists")
        for metric in METRICS:
            m = entry[metric]
            text = (f"    {metric:<24} {_fmt(metric, m['value']):>9}  "
                    f"[{_fmt(metric, m['ci_low'])}, {_fmt(metric, m['ci_high'])}]")
            if m["lift_vs_control"] is not None:
                p = m["p_value"]
                text += (f"   lift {_pct(m['lift_vs_control'])} [{_pct(m['lift_ci_low'])}, "
                         f"{_pct(m['lift_ci_high'])}]  p{_p(p)}")
            lines.append(text)
    lines.append(verdict(report))
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.common import require_redis
    from streamrec.redis_conn import redacted, sync_client
    from streams.experiment_store import read_experiments

    require_redis(settings, "experiment report")
    client = sync_client(settings)
    try:
        experiments = read_experiments(client, settings.app_id,
                                       None if args.name is None else [args.name])
        known = ([] if experiments or args.name is None else
                 read_experiments(client, settings.app_id))
    except redis.RedisError as exc:
        raise StateStoreUnavailable(
            f"Redis at {redacted(settings.redis_url)} did not answer: {exc}") from exc
    finally:
        client.close()
    hidden = []
    if args.running and args.name is None:
        hidden = [e["name"] for e in experiments if e["status"] != "running"]
        experiments = [e for e in experiments if e["status"] == "running"]
    if not experiments:
        if hidden:
            print(f"streamrec experiment report: no experiment is running (ended or removed: "
                  f"{', '.join(hidden)}; leave out --running to see them)", file=sys.stderr)
            return 1
        if args.name is not None:
            names = ", ".join(e["name"] for e in known) or "none"
            raise ConfigError(f"no experiment named {args.name!r} in Redis for app "
                              f"{settings.app_id!r} (recorded: {names})")
        print(f"streamrec experiment report: no experiments recorded in Redis at "
              f"{redacted(settings.redis_url)} for app {settings.app_id!r}; start a worker "
              "with STREAMREC_EXPERIMENTS set", file=sys.stderr)
        return 1
    for i, experiment in enumerate(experiments):
        report = build(experiment)
        if args.json:
            print(orjson.dumps(report).decode())
        else:
            print(("\n" if i else "") + render(report))
    return 0
