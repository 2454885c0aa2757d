"""Static checks of the deployment files: Dockerfile, docker-compose.yml, deploy/**.

No panel or alert may point at a metric the worker does not export, the rule file must be
valid Prometheus rules that fire when they should (``promtool``), and the compose file must
be valid (``docker-compose config -q``). ``make test`` installs ``promtool`` and
``docker-compose`` with apt (``make tools``); when they are missing the tests that need
them fail with the command to run, and skip only on an OS without apt-get at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

# Importing streamrec.metrics registers every metric the worker exports in REGISTRY.
from streamrec.metrics import EXPORTED
from streamrec.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
COMPOSE = ROOT / "docker-compose.yml"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL aggregation operators and functions (Prometheus 2.x). A name outside this set
# followed by "(" is a typo that Grafana would only report as a red triangle at run time.
PROMQL_FUNCTIONS = frozenset("""
sum min max avg group stddev stdvar count count_values bottomk topk quantile
abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week
day_of_year days_in_month delta deriv exp floor histogram_count histogram_sum
histogram_fraction histogram_quantile holt_winters hour idelta increase irate label_join
label_replace ln log2 log10 minute month predict_linear rate resets round scalar sgn sort
sort_desc sqrt time timestamp vector year avg_over_time min_over_time max_over_time
sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time
last_over_time present_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan
tanh deg rad pi
""".split())
PROMQL_KEYWORDS = frozenset(
    "by without on ignoring group_left group_right offset bool and or unless atan2 inf nan"
    .split()
)

# Alerts operators rely on (issue 5 and the README's operating section).
REQUIRED_ALERTS = {
    "StreamrecConsumerLagGrowing", "StreamrecDeadLetterRateHigh",
    "StreamrecNoRecommendations", "StreamrecLatencyP99High",
    "StreamrecRecallBelowPopularity", "StreamrecRecallHalved",
    "StreamrecRecordsLost", "StreamrecPipelineDown", "StreamrecOutputsLost",
    "StreamrecCheckpointStale",
}


# ---------------------------------------------------------------------------- helpers

def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def check_balanced(expr: str) -> None:
    """Raise ValueError unless (), [] and {} are balanced and properly nested."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in _strip_strings(expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                raise ValueError(f"unbalanced {ch!r} in {expr!r}")
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in {expr!r}")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, function names) used by a PromQL expression.

    Also accepts Grafana's variables ($instance, $__rate_interval, ...).
    """
    check_balanced(expr)
    s = _strip_strings(expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\$\{?\w+(?::\w+)?\}?", " 1 ", s)  # Grafana variables outside brackets
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[\dsmhdwy]+", " ", s)
    s = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", " ", s)  # numbers
    metrics: set[str] = set()
    functions: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", s):
        name = match.group(0)
        if re.match(r"\s*\(", s[match.end():]):
            functions.add(name)
        elif name not in PROMQL_KEYWORDS:
            metrics.add(name)
    return metrics, functions


def exposed_by_exported() -> set[str]:
    """Sample names Prometheus sees for the metrics streamrec.metrics.EXPORTED declares."""
    names: set[str] = set()
    for name, kind in EXPORTED.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names


def exposed_by_registry() -> set[str]:
    """Sample names of every metric registered in the live prometheus_client registry.

    Importing streamrec.metrics (above) registers them. A labelled metric with no children yet has
    no samples, so names are derived from each family's type as well.
    """
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def base_name(sample_name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix) and sample_name.removesuffix(suffix) in EXPORTED:
            return sample_name.removesuffix(suffix)
    return sample_name


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(dashboard_panels(panel.get("panels", [])))
    return out


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(where, PromQL) for every query of a dashboard: panel targets and variables."""
    board = json.loads(path.read_text())
    exprs = []
    for panel in dashboard_panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                exprs.append((f"{path.name}: panel {panel.get('title')!r}", target["expr"]))
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else query or ""
        label_values = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", text)
        if label_values:
            exprs.append((f"{path.name}: variable ${var['name']}", label_values.group(1)))
        elif var.get("type") == "query" and text:
            exprs.append((f"{path.name}: variable ${var['name']}", text))
    return exprs


def all_exprs() -> list[tuple[str, str]]:
    exprs = [(f"alerts.yml: {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for path in DASHBOARDS:
        exprs.extend(dashboard_exprs(path))
    return exprs


def require_tool(name: str, package: str) -> str:
    """Path of a command-line tool; fail loudly if apt could have installed it."""
    path = shutil.which(name)
    if path:
        return path
    if shutil.which("apt-get") is None:
        pytest.skip(
            f"{name} is not installed and this OS has no apt-get to install Debian's "
            f"{package!r} package; the structural checks in this file still ran"
        )
    pytest.fail(
        f"{name} not found on PATH: run `make tools` as root "
        f"(apt-get install -y --no-install-recommends {package})",
        pytrace=False,
    )


def run_tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ the name extractor

@pytest.mark.parametrize(
    ("expr", "metrics", "functions"),
    [
        ('sum by (le) (rate(foo_bucket{a="b",c=~"$x"}[5m])) > 1e3',
         {"foo_bucket"}, {"sum", "rate"}),
        ("avg(x{m=\"a\"}) < 0.5 * avg(x{m=\"a\"} offset 1h)", {"x"}, {"avg"}),
        ("a / ignoring(stage) group_left sum(b) and on() c unless d", {"a", "b", "c", "d"},
         {"sum"}),
        ("1e6 * rate(y[$__rate_interval]) / scalar(z)", {"y", "z"}, {"rate", "scalar"}),
        ("(sum(increase(q[5m])) or vector(0)) == bool 0", {"q"}, {"sum", "increase", "vector"}),
    ],
)
def test_promql_name_extraction(expr: str, metrics: set[str], functions: set[str]) -> None:
    assert promql_names(expr) == (metrics, functions)


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", "x{a=\"b\"", "rate(x[5m)]"])
def test_unbalanced_expressions_are_rejected(expr: str) -> None:
    with pytest.raises(ValueError):
        promql_names(expr)


# ------------------------------------------------------- dashboards and alerts vs metrics

def test_exported_declaration_matches_the_live_registry() -> None:
    missing = exposed_by_exported() - exposed_by_registry()
    assert not missing, f"EXPORTED names no registered metric exposes: {sorted(missing)}"


def test_every_metric_in_dashboards_and_alerts_is_exported() -> None:
    assert DASHBOARDS, "no dashboard in deploy/grafana/dashboards"
    declared = exposed_by_exported()
    live = exposed_by_registry()
    problems = []
    used = set()
    for where, expr in all_exprs():
        metrics, functions = promql_names(expr)
        used |= metrics
        for name in sorted(metrics):
            if base_name(name) not in EXPORTED:
                problems.append(f"{where}: {name} is not in streamrec.metrics.EXPORTED")
            elif name not in declared:
                problems.append(f"{where}: {name} has the wrong suffix for a "
                                f"{EXPORTED[base_name(name)]}")
            elif name not in live:
                problems.append(f"{where}: {name} is not exposed by the live registry")
        for fn in sorted(functions - PROMQL_FUNCTIONS):
            problems.append(f"{where}: unknown PromQL function {fn}()")
    assert not problems, "\n".join(problems)
    assert used, "no metric names found: the extractor is broken"


# ------------------------------------------------------------------------ alert rules

def test_alert_rules_structure() -> None:
    """What promtool checks, in Python, so it holds even where promtool is absent."""
    doc = load_yaml(ALERTS)
    assert set(doc) == {"groups"}
    names = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.keys()
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations",
                                 "keep_firing_for"}, rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule["alert"]
            assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
            names.add(rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            promql_names(rule["expr"])  # balanced
            if "for" in rule:
                assert re.fullmatch(r"(\d+[smhdwy])+", str(rule["for"])), rule["for"]
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            annotations = rule["annotations"]
            assert annotations.get("summary") and annotations.get("description"), rule["alert"]
            for text in annotations.values():
                assert text.count("{{") == text.count("}}"), text
    assert REQUIRED_ALERTS <= names, f"missing alerts: {sorted(REQUIRED_ALERTS - names)}"


def test_every_alert_has_a_runbook_row_in_the_readme() -> None:
    """An operator paged by an alert finds it in "When an alert fires", with its severity,
    and the table lists no alert that no longer exists."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### When an alert fires", 1)[1].split("\n### ", 1)[0]
    rows = dict(re.findall(r"^\| `(Streamrec\w+)` \((\w+)\) \|", section, flags=re.M))
    rules = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    assert rows == rules


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run_tool([promtool, "check", "rules", str(ALERTS)], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_check_prometheus_config() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run_tool([promtool, "check", "config", str(PROMETHEUS_CONFIG)], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query as a recording rule's expression."""
    promtool = require_tool("promtool", "prometheus")
    rules = []
    for i, (_where, expr) in enumerate(e for path in DASHBOARDS for e in dashboard_exprs(path)):
        expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool([promtool, "check", "rules", str(rule_file)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# Series in, alerts out: each alert fires on the failure it names and stays quiet on a
# healthy system. Annotations are stripped (promtool compares them verbatim, and their
# templates are checked by `promtool check rules`); this is about the expressions.
W = 'instance="w1:9464", job="streamrec-worker"'
ALERT_UNIT_TESTS: list[dict[str, Any]] = [
    {"interval": "1m",
     "input_series": [{"series": f"streamrec_pipeline_up{{{W}}}", "values": "1 0x10"}],
     "alert_rule_test": [
         {"eval_time": "2m", "alertname": "StreamrecPipelineDown", "exp_alerts": []},
         {"eval_time": "4m", "alertname": "StreamrecPipelineDown",
          "exp_alerts": [{"exp_labels": {"severity": "critical",
                                         "instance": "w1:9464", "job": "streamrec-worker"}}]},
         {"eval_time": "4m", "alertname": "StreamrecWorkersAbsent", "exp_alerts": []},
     ]},
    {"interval": "1m",
     "input_series": [{"series": f"streamrec_events_consumed_total{{type=\"play\", {W}}}",
                       "values": "0+10x10"}],
     "alert_rule_test": [
         {"eval_time": "3m", "alertname": "StreamrecWorkersAbsent",
          "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
         {"eval_time": "8m", "alertname": "StreamrecNoRecommendations",
          "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_records_lost_total{{topic=\"events\", {W}}}",
          "values": "0 0 5x10"},
         {"series": f"streamrec_records_lost_total{{topic=\"catalog\", {W}}}",
          "values": "0x12"},
     ],
     "alert_rule_test": [
         {"eval_time": "1m", "alertname": "StreamrecRecordsLost", "exp_alerts": []},
         {"eval_time": "3m", "alertname": "StreamrecRecordsLost",
          "exp_alerts": [{"exp_labels": {"severity": "critical", "topic": "events"}}]},
         {"eval_time": "20m", "alertname": "StreamrecRecordsLost", "exp_alerts": []},
     ]},
    # A labelled counter is created at its first increment: its first value is the loss.
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_records_lost_total{{topic=\"events\", {W}}}",
          "values": "_ _ _ 7x20"},
     ],
     "alert_rule_test": [
         {"eval_time": "4m", "alertname": "StreamrecRecordsLost",
          "exp_alerts": [{"exp_labels": {"severity": "critical", "topic": "events"}}]},
         {"eval_time": "20m", "alertname": "StreamrecRecordsLost", "exp_alerts": []},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_delivery_failures_total{{topic=\"notifications\", {W}}}",
          "values": "0 0 3x20"},
         {"series": f"streamrec_delivery_failures_total{{topic=\"recommendations\", {W}}}",
          "values": "0x22"},
     ],
     "alert_rule_test": [
         {"eval_time": "1m", "alertname": "StreamrecOutputsLost", "exp_alerts": []},
         {"eval_time": "3m", "alertname": "StreamrecOutputsLost",
          "exp_alerts": [{"exp_labels": {"severity": "critical", "topic": "notifications"}}]},
         {"eval_time": "20m", "alertname": "StreamrecOutputsLost", "exp_alerts": []},
     ]},
    # Saved every minute (the gauge holds the save's Unix time; promtool's clock starts at
    # 0), then never after 5 minutes.
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_last_checkpoint_timestamp_seconds{{{W}}}",
          "values": "0+60x5 300x40"},
     ],
     "alert_rule_test": [
         {"eval_time": "18m", "alertname": "StreamrecCheckpointStale", "exp_alerts": []},
         {"eval_time": "30m", "alertname": "StreamrecCheckpointStale",
          "exp_alerts": [{"exp_labels": {"severity": "warning",
                                         "instance": "w1:9464", "job": "streamrec-worker"}}]},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_consumer_lag{{topic=\"events\", partition=\"0\", {W}}}",
          "values": "0+500x20"},
         {"series": f"streamrec_consumer_lag{{topic=\"catalog\", partition=\"0\", {W}}}",
          "values": "5000x20"},
     ],
     "alert_rule_test": [
         {"eval_time": "5m", "alertname": "StreamrecConsumerLagGrowing", "exp_alerts": []},
         {"eval_time": "15m", "alertname": "StreamrecConsumerLagGrowing",
          "exp_alerts": [{"exp_labels": {"severity": "warning", "topic": "events"}}]},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_recommendations_emitted_total{{{W}}}",
          "values": "0+100x5 500x10"},
     ],
     "alert_rule_test": [
         {"eval_time": "5m", "alertname": "StreamrecNoRecommendations", "exp_alerts": []},
         {"eval_time": "14m", "alertname": "StreamrecNoRecommendations",
          "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_events_consumed_total{{type=\"play\", {W}}}",
          "values": "0+100x30"},
         {"series": f"streamrec_events_dead_lettered_total{{reason=\"invalid_json\", {W}}}",
          "values": "0+5x30"},
         {"series": f"streamrec_events_dead_lettered_total{{reason=\"wrong_type\", {W}}}",
          "values": "0+1x30"},
     ],
     "alert_rule_test": [
         {"eval_time": "20m", "alertname": "StreamrecDeadLetterRateHigh",
          "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_events_consumed_total{{type=\"play\", {W}}}",
          "values": "0+100x30"},
         {"series": f"streamrec_events_dead_lettered_total{{reason=\"invalid_json\", {W}}}",
          "values": "0+1x30"},
     ],
     "alert_rule_test": [
         {"eval_time": "20m", "alertname": "StreamrecDeadLetterRateHigh", "exp_alerts": []},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_event_to_recommendation_seconds_bucket{{le=\"{le}\", {W}}}",
          "values": f"0+{n}x30"}
         for le, n in (("0.1", 10), ("1.0", 10), ("5.0", 100), ("+Inf", 100))
     ],
     "alert_rule_test": [
         {"eval_time": "20m", "alertname": "StreamrecLatencyP99High",
          "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_event_to_recommendation_seconds_bucket{{le=\"{le}\", {W}}}",
          "values": f"0+{n}x30"}
         for le, n in (("0.01", 100), ("0.1", 100), ("+Inf", 100))
     ],
     "alert_rule_test": [
         {"eval_time": "20m", "alertname": "StreamrecLatencyP99High", "exp_alerts": []},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_redis_errors_total{{op=\"apply_batch\", {W}}}",
          "values": "0+1x10"},
         {"series": f"streamrec_redis_errors_total{{op=\"save_last_lists\", {W}}}",
          "values": "0x10"},
     ],
     "alert_rule_test": [
         {"eval_time": "8m", "alertname": "StreamrecRedisErrors",
          "exp_alerts": [{"exp_labels": {"severity": "warning", "op": "apply_batch"}}]},
     ]},
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_online_recall_at_k{{model=\"streamrec\", {W}}}",
          "values": "0.1x40"},
         {"series": f"streamrec_online_recall_at_k{{model=\"popularity\", {W}}}",
          "values": "0.2x40"},
     ],
     "alert_rule_test": [
         {"eval_time": "10m", "alertname": "StreamrecRecallBelowPopularity", "exp_alerts": []},
         {"eval_time": "35m", "alertname": "StreamrecRecallBelowPopularity",
          "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
     ]},
    {"interval": "5m",
     "input_series": [
         {"series": f"streamrec_online_recall_at_k{{model=\"streamrec\", {W}}}",
          "values": "0.3x12 0.1x8"},
         {"series": f"streamrec_online_recall_at_k{{model=\"popularity\", {W}}}",
          "values": "0.05x20"},
     ],
     "alert_rule_test": [
         {"eval_time": "60m", "alertname": "StreamrecRecallHalved", "exp_alerts": []},
         {"eval_time": "95m", "alertname": "StreamrecRecallHalved",
          "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
         {"eval_time": "95m", "alertname": "StreamrecRecallBelowPopularity", "exp_alerts": []},
     ]},
    # A healthy worker: none of the alerts fires.
    {"interval": "1m",
     "input_series": [
         {"series": f"streamrec_pipeline_up{{{W}}}", "values": "1x30"},
         {"series": f"streamrec_events_consumed_total{{type=\"play\", {W}}}",
          "values": "0+1000x30"},
         {"series": f"streamrec_recommendations_emitted_total{{{W}}}", "values": "0+1000x30"},
         {"series": f"streamrec_consumer_lag{{topic=\"events\", partition=\"0\", {W}}}",
          "values": "30 10 50 20 40 0 30 10 50 20 40 0 30 10 50 20 40 0 30 10 50 20 40 0"},
         {"series": f"streamrec_records_lost_total{{topic=\"events\", {W}}}", "values": "0x30"},
         {"series": f"streamrec_delivery_failures_total{{topic=\"recommendations\", {W}}}",
          "values": "0x30"},
         {"series": f"streamrec_last_checkpoint_timestamp_seconds{{{W}}}", "values": "0+60x30"},
     ],
     "alert_rule_test": [
         {"eval_time": "25m", "alertname": name, "exp_alerts": []}
         for name in sorted(REQUIRED_ALERTS | {"StreamrecWorkersAbsent"})
     ]},
]


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    rules = load_yaml(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    tested = {case["alertname"] for test in ALERT_UNIT_TESTS for case in test["alert_rule_test"]
              if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in alert_rules()}, "an alert without a firing test"
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump({
        "rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": ALERT_UNIT_TESTS,
    }))
    result = run_tool([promtool, "test", "rules", "alerts_test.yml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------- dashboards

def test_dashboard_panels_cover_what_operators_need() -> None:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "streamrec.json").read_text())
    panels = [p for p in dashboard_panels(board["panels"]) if p.get("type") != "row"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for needed in (
        "sum by (type) (rate(streamrec_events_consumed_total",
        "streamrec_events_dead_lettered_total", "streamrec_consumer_lag",
        "streamrec_online_recall_at_k", "streamrec_online_recall_new_titles_at_k",
        "streamrec_redis_seconds_bucket",
        "streamrec_redis_errors_total", "streamrec_model_size", "streamrec_stage_seconds",
        "streamrec_pipeline_up", "streamrec_records_lost_total",
    ):
        assert needed in exprs, f"no panel queries {needed}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert (f"histogram_quantile({quantile}, sum by (le) "
                f"(rate(streamrec_event_to_recommendation_seconds_bucket") in exprs
    ids = [p["id"] for p in dashboard_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        assert panel.get("description"), f"panel {panel['title']!r} has no description"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]


def test_dashboards_use_the_provisioned_datasource() -> None:
    provisioned = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources"
                            / "prometheus.yml")["datasources"]
    uids = {ds["uid"] for ds in provisioned}
    assert any("prometheus:9090" in ds["url"] for ds in provisioned)

    def datasource_uids(node: Any) -> set[str]:
        found = set()
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and "uid" in ds:
                found.add(ds["uid"])
            for value in node.values():
                found |= datasource_uids(value)
        elif isinstance(node, list):
            for value in node:
                found |= datasource_uids(value)
        return found

    for path in DASHBOARDS:
        used = datasource_uids(json.loads(path.read_text()))
        assert used and used <= uids, f"{path.name} points at datasources {used - uids}"


# ------------------------------------------------------------ compose and Prometheus

def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_docker_compose_config_is_valid() -> None:
    tool = require_tool("docker-compose", "docker-compose")
    result = run_tool([tool, "-f", str(COMPOSE), "config", "-q"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_are_wired_as_documented() -> None:
    services = compose()["services"]
    assert {"kafka", "redis", "worker", "sink", "simulator", "prometheus", "grafana"} <= set(
        services
    )
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]

    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])

    worker = services["worker"]
    # Scalable with --scale: a fixed name or host port would clash between replicas.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"] == ["worker"]
    assert worker["environment"]["STREAMREC_METRICS_HOST"] == "0.0.0.0"
    port = int(worker["environment"]["STREAMREC_METRICS_PORT"])
    assert str(port) in [str(p) for p in worker["expose"]]
    assert services["simulator"]["command"][0] == "simulate"
    assert {"--rate", "--duration"} <= set(services["simulator"]["command"])
    assert services["sink"]["command"] == ["sink"]
    for name in ("worker", "sink", "simulator"):
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"

    # Prometheus scrapes every worker replica on the port the worker serves.
    prom = load_yaml(PROMETHEUS_CONFIG)
    sd = [sd for job in prom["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    assert [(s["names"], s["type"], s["port"]) for s in sd] == [(["worker"], "A", port)]
    assert "alerts.yml" in prom["rule_files"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]

    # Grafana loads the dashboards from where compose mounts them.
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"]
                  if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards"
                         / "streamrec.yml")["providers"][0]
    assert provider["options"]["path"] == mounts["./deploy/grafana/dashboards"]


def test_every_setting_can_be_set_from_the_shell_under_compose() -> None:
    """The README says every variable of its table can be set from the shell or an .env
    file: compose must pass each one through to every streamrec service."""
    tool = require_tool("docker-compose", "docker-compose")
    # The worker's metrics address is its own (Prometheus scrapes worker:9464).
    own = {"STREAMREC_METRICS_HOST", "STREAMREC_METRICS_PORT"}
    marked = {var: f"set-from-shell-{i}" for i, var in enumerate(ENV_VARS) if var not in own}
    result = subprocess.run([tool, "-f", str(COMPOSE), "config"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **marked})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("worker", "sink", "simulator"):
        environment = services[name]["environment"]
        lost = sorted(var for var, value in marked.items() if environment.get(var) != value)
        assert not lost, f"{name} does not get {lost} from the shell"
        assert "/etc/streamrec" in str(services[name]["volumes"]), name


def test_compose_sets_only_known_streamrec_variables() -> None:
    """A misspelt variable in compose would be silently ignored by the worker."""
    services = compose()["services"]
    for name in ("worker", "sink", "simulator"):
        for var in services[name]["environment"]:
            if var.startswith(("STREAMREC_", "KAFKA_", "REDIS_")):
                assert var in ENV_VARS, f"{name}: {var} is not a streamrec setting"


def test_dockerfile_builds_every_package_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert froms and all(f.startswith("python:3.11-slim") for f in froms), froms
    final_stage = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER\s+(?!root\b|0\b)\S+", final_stage, flags=re.M)
    assert 'ENTRYPOINT ["streamrec"]' in final_stage
    assert re.search(r"OPENBLAS_NUM_THREADS=1\b", final_stage)
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in patterns]
    assert packages
    for package in packages:
        assert re.search(rf"^COPY\s+{package}\s", text, flags=re.M), (
            f"package {package} is installed by pyproject.toml but not copied into the image"
        )
