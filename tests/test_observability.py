"""The observability kit against the code: alert rules, the Grafana dashboard, the catalogue.

- ``promtool`` (Debian package ``prometheus``) accepts the alert rules, the example Prometheus
  config, every dashboard expression, and a live /metrics scrape of a working daemon;
- the alerts fire when they should: ``promtool test rules`` on synthetic series;
- every metric name (and every label matcher) in the dashboard and the alert rules is exported
  by ``lakeferry.metrics.Metrics``, and every exported metric is described in docs/metrics.md.

Without promtool these tests fail, naming the package (``make test`` installs it first).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.daemon import DaemonEnv
from helpers.origin import Origin
from helpers.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "etc" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "etc" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "lakeferry-dashboard.json"
CATALOGUE = ROOT / "docs" / "metrics.md"

# Sample names each family type exports (prometheus-client, OpenMetrics-style _created).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
}
# The name under which the catalogue documents a family.
DOCUMENTED_AS = {"counter": "_total", "gauge": "", "histogram": "", "info": "_info"}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install the Debian package `prometheus` "
            "(apt-get install --no-install-recommends prometheus; `make test` runs "
            "tools/system_deps.sh, which does)"
        )
    return path


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


# -- what the code exports -------------------------------------------------------------------


class Family:
    def __init__(self, name: str, kind: str, labels: frozenset[str]) -> None:
        self.name, self.kind, self.labels = name, kind, labels

    @property
    def samples(self) -> list[str]:
        return [self.name + suffix for suffix in SUFFIXES[self.kind]]

    @property
    def documented_name(self) -> str:
        return self.name + DOCUMENTED_AS[self.kind]


def exported_families() -> dict[str, Family]:
    """Every metric family ``Metrics`` registers, with its label names."""
    from prometheus_client.metrics import MetricWrapperBase

    from lakeferry.metrics import Metrics

    metrics = Metrics()
    try:
        label_names: dict[str, set[str]] = {}
        for value in vars(metrics).values():
            if isinstance(value, MetricWrapperBase):
                for described in value.describe():
                    # prometheus-client has no public accessor for a wrapper's label names.
                    label_names[described.name] = set(value._labelnames)
        families = {}
        for family in metrics.registry.collect():
            labels = label_names.get(family.name, set())
            labels |= {key for sample in family.samples for key in sample.labels} - {"le"}
            assert family.type in SUFFIXES, f"{family.name}: no rule for type {family.type}"
            families[family.name] = Family(family.name, family.type, frozenset(labels))
        return families
    finally:
        metrics.close()


def exported_samples() -> dict[str, frozenset[str]]:
    """Sample name -> the labels a selector of it may match on."""
    out = {}
    for family in exported_families().values():
        for sample in family.samples:
            extra = {"le"} if sample.endswith("_bucket") else set()
            out[sample] = family.labels | extra | TARGET_LABELS
    return out


# -- what the dashboard and the rules use ----------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"\b(lakeferry_\w+)\s*(\{[^}]*\})?")
_MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def references(expr: str) -> list[tuple[str, set[str]]]:
    """The lakeferry metrics an expression selects, each with the labels it matches on."""
    # Blank out string contents so names and braces inside regexes and templates do not count.
    blanked = _STRING.sub(
        lambda m: m.group(0)[0] + "x" * (len(m.group(0)) - 2) + m.group(0)[0], expr
    )
    found = []
    for match in _SELECTOR.finditer(blanked):
        labels = set(_MATCHER_LABEL.findall(match.group(2) or ""))
        found.append((match.group(1), labels))
    return found


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and annotations."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                out.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard()["panels"])
    walk(dashboard()["annotations"])
    assert len(out) > 40
    return out


def dashboard_variable_queries() -> list[str]:
    return [v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


class Rule:
    """One alerting rule of alerts.yml, read without a YAML library (the file's own layout)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.name = lines[0].split("alert:", 1)[1].strip()
        self.fields: dict[str, str] = {}
        i = 1
        while i < len(lines):
            line = lines[i]
            key_value = re.match(r"^(\s+)(\w+):\s*(.*)$", line)
            i += 1
            if key_value is None:
                continue
            indent, key, value = key_value.groups()
            if value in ("|", ">-", "|-", ">"):
                block = []
                while i < len(lines) and (
                    not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
                ):
                    block.append(lines[i].strip())
                    i += 1
                value = ("\n" if value.startswith("|") else " ").join(block).strip()
            self.fields[key] = value.strip().strip('"')

    def without_annotations(self) -> list[str]:
        out, skipping, indent = [], False, 0
        for line in self.lines:
            stripped = line.lstrip()
            if stripped.startswith("annotations:"):
                skipping, indent = True, len(line) - len(stripped)
                continue
            if skipping and stripped and len(line) - len(stripped) <= indent:
                skipping = False
            if not skipping:
                out.append(line)
        return out


def alert_rules() -> tuple[list[str], list[Rule]]:
    """The file's head (up to the first rule) and its rules."""
    lines = ALERTS.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("- alert:")]
    assert starts, "no alerting rules found"
    bounds = [*starts, len(lines)]
    return lines[: starts[0]], [Rule(lines[a:b]) for a, b in itertools.pairwise(bounds)]


# -- promtool on the files -------------------------------------------------------------------


@pytest.mark.slow
def test_alert_rules_pass_promtool() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    _head, rules = alert_rules()
    # The hand-written reader above sees every rule promtool sees.
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.slow
def test_example_prometheus_config_passes_promtool() -> None:
    result = run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_duration_a_severity_and_words_for_the_operator() -> None:
    _head, rules = alert_rules()
    for rule in rules:
        assert rule.name.startswith("Lakeferry"), rule.name
        assert re.fullmatch(r"\d+[smh]", rule.fields.get("for", "")), f"{rule.name}: for:"
        assert rule.fields.get("severity") in ("critical", "warning", "info"), rule.name
        assert len(rule.fields.get("summary", "")) > 10, f"{rule.name}: summary"
        assert len(rule.fields.get("description", "")) > 40, f"{rule.name}: description"
    names = [rule.name for rule in rules]
    assert len(set(names)) == len(names)
    catalogue = CATALOGUE.read_text()
    assert [n for n in names if f"`{n}`" not in catalogue] == [], "alerts missing from the docs"


@pytest.mark.slow
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """Every panel query, as Grafana would send it, parses (as a recording rule)."""
    substitutions = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "1h",
        "$job": ".*",
        "$instance": ".*",
    }
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr.replace("$1", ""), f"unknown variable in {expr}"
        rules.append({"record": f"lakeferry_dashboard:expr{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["multi"]
        assert variables[name]["includeAll"]
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == [
        "Overview",
        "Stage: Ingest",
        "Stage: Download",
        "Stage: Upload",
        "Stage: Results",
        "Nodes (fleet)",
        "Origins (download, per host:port)",
        "Lanes (live, backfill)",
        "Dead letters and retry rungs, now",
    ]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
    # Panels do not overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


# -- names and labels against the code -------------------------------------------------------


def test_dashboard_and_alerts_use_only_exported_metrics_and_labels() -> None:
    samples = exported_samples()
    _head, rules = alert_rules()
    exprs = {f"alert {rule.name}": rule.fields["expr"] for rule in rules}
    exprs |= {f"dashboard expr {i}": e for i, e in enumerate(dashboard_exprs())}
    exprs |= {f"dashboard variable {q}": q for q in dashboard_variable_queries()}
    problems, used = [], set()
    for where, expr in exprs.items():
        refs = references(expr)
        for name, labels in refs:
            used.add(name)
            if name not in samples:
                problems.append(f"{where}: {name} is not exported")
            elif labels - samples[name]:
                problems.append(f"{where}: {name} has no label(s) {sorted(labels - samples[name])}")
    assert problems == []
    # The kit covers what matters: every family is on the dashboard or in an alert.
    unused = [f.name for f in exported_families().values() if not any(s in used for s in f.samples)]
    assert unused == []


def test_every_exported_metric_is_in_the_catalogue() -> None:
    catalogue = CATALOGUE.read_text()
    families = exported_families()
    assert "lakeferry_consumer_lag" in families
    missing = [
        f.documented_name for f in families.values() if f"`{f.documented_name}`" not in catalogue
    ]
    assert missing == []
    # ... and the catalogue names nothing that does not exist.
    known = set(exported_samples()) | {f.documented_name for f in families.values()}
    named = set(re.findall(r"`(lakeferry_\w+)`", catalogue))
    assert sorted(named - known) == []
    # Each family's labels are named in its row of the catalogue.
    for family in families.values():
        row = next(
            line
            for line in catalogue.splitlines()
            if line.startswith(f"| `{family.documented_name}`")
        )
        for label in family.labels:
            assert f"`{label}`" in row, f"{family.documented_name}: label {label} not in its row"


# -- the alerts fire when they should --------------------------------------------------------

J = 'job="lf"'


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ", ".join(f'{k}="{v}"' for k, v in {"job": "lf", **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def alert(labels: dict[str, str]) -> dict[str, Any]:
    return {"exp_labels": {"job": "lf", **labels}}


LAG = "lakeferry_consumer_lag"
MESSAGES = "lakeferry_stage_messages_total"
DOWNLOAD = {"group": "lakeferry.download", "topic": "downloads.pending", "partition": "0"}

# (input series, [(eval time, alert name, expected alerts)]) -- one promtool test each.
ALERT_CASES: dict[str, tuple[list[dict[str, str]], list[tuple[str, str, list[dict[str, Any]]]]]] = {
    "bus down": (
        [
            series("lakeferry_bus_up", "1 1 0x10", instance="a:1"),
            series("lakeferry_bus_up", "1x12", instance="b:1"),
        ],
        [
            ("1m", "LakeferryBusDown", []),
            ("10m", "LakeferryBusDown", [alert({"instance": "a:1", "severity": "critical"})]),
        ],
    ),
    "a target is down": (
        [
            series("up", "0x10", job="lakeferry", instance="a:1"),
            series("up", "1x10", job="lakeferry", instance="b:1"),
        ],
        [
            (
                "6m",
                "LakeferryDown",
                [alert({"job": "lakeferry", "instance": "a:1", "severity": "critical"})],
            )
        ],
    ),
    "stalled stage, not a busy one, not a retry rung": (
        [
            # download: 50 records wait, nothing finishes
            series(LAG, "50x40", instance="a:1", **DOWNLOAD),
            series(LAG, "50x40", instance="b:1", **DOWNLOAD),  # a second worker, same group
            series(MESSAGES, "10x40", instance="a:1", stage="download", outcome="downloaded"),
            # upload: work waits but flows
            series(
                LAG,
                "5x40",
                instance="a:1",
                group="lakeferry.upload",
                topic="downloads.cached",
                partition="0",
            ),
            series(MESSAGES, "0+10x40", instance="a:1", stage="upload", outcome="uploaded"),
            # results: only a retry rung's kind of topic has lag (a job of its own)
            series(
                LAG,
                "7x40",
                job="lf2",
                instance="c:1",
                group="lakeferry.download",
                topic="retry.5m",
                partition="0",
            ),
        ],
        [
            ("3m", "LakeferryStageStalled", []),
            (
                "25m",
                "LakeferryStageStalled",
                [alert({"stage": "download", "severity": "critical"})],
            ),
        ],
    ),
    "a fleet node's uploads stalled (its group is <group>.upload.<node>)": (
        [
            series(
                LAG,
                "20x40",
                instance="a:1",
                group="t1.lakeferry.upload.results",  # a node named like a stage
                topic="downloads.cached.results",
                partition="0",
            ),
            series(MESSAGES, "10x40", instance="a:1", stage="upload", outcome="uploaded"),
        ],
        [
            (
                "25m",
                "LakeferryStageStalled",
                [alert({"stage": "upload", "severity": "critical"})],
            ),
        ],
    ),
    "lag growing": (
        [
            series(
                LAG,
                "0+100x90",
                instance="a:1",
                group="lakeferry.upload",
                topic="downloads.cached",
                partition="0",
            ),
            series(
                LAG,
                "5000x90",
                job="lf2",
                instance="a:1",
                group="lakeferry.upload",
                topic="downloads.cached",
                partition="0",
            ),
        ],
        [
            ("20m", "LakeferryConsumerLagGrowing", []),
            (
                "60m",
                "LakeferryConsumerLagGrowing",
                [alert({"group": "lakeferry.upload", "severity": "warning"})],
            ),
        ],
    ),
    "dead letters keep coming": (
        [
            series(
                "lakeferry_dlq_total",
                "0+1x60",
                instance="a:1",
                stage="download",
                reason="not_found",
            ),
            series(
                "lakeferry_dlq_total", "0 1x60", instance="a:1", stage="download", reason="timeout"
            ),
        ],
        [
            ("20m", "LakeferryDeadLettersGrowing", []),
            (
                "45m",
                "LakeferryDeadLettersGrowing",
                [alert({"stage": "download", "reason": "not_found", "severity": "warning"})],
            ),
        ],
    ),
    "dead letter ratio": (
        [
            series(MESSAGES, "0+10x60", instance="a:1", stage="ingest", outcome="published"),
            series("lakeferry_dlq_total", "0+1x60", instance="a:1", stage="download", reason="x"),
            series(
                MESSAGES, "0+10x60", job="lf2", instance="a:1", stage="ingest", outcome="published"
            ),
            series(
                "lakeferry_dlq_total",
                "0+0.1x60",
                job="lf2",
                instance="a:1",
                stage="download",
                reason="x",
            ),
        ],
        [("50m", "LakeferryDeadLetterRatioHigh", [alert({"severity": "warning"})])],
    ),
    "cache near its quota": (
        [
            series("lakeferry_cache_bytes", "95x30", instance="a:1"),
            series("lakeferry_cache_quota_bytes", "100x30", instance="a:1"),
            series("lakeferry_cache_bytes", "50x30", instance="b:1"),
            series("lakeferry_cache_quota_bytes", "100x30", instance="b:1"),
        ],
        [
            ("10m", "LakeferryCacheNearQuota", []),
            ("20m", "LakeferryCacheNearQuota", [alert({"instance": "a:1", "severity": "warning"})]),
        ],
    ),
    "slow end to end": (
        [
            series("lakeferry_end_to_end_seconds_bucket", "0x40", le="1", instance="a:1"),
            series("lakeferry_end_to_end_seconds_bucket", "0x40", le="5", instance="a:1"),
            series("lakeferry_end_to_end_seconds_bucket", "0+10x40", le="10", instance="a:1"),
            series("lakeferry_end_to_end_seconds_bucket", "0+10x40", le="+Inf", instance="a:1"),
            series(
                "lakeferry_end_to_end_seconds_bucket", "0+10x40", job="lf2", le="1", instance="a:1"
            ),
            series(
                "lakeferry_end_to_end_seconds_bucket", "0+10x40", job="lf2", le="5", instance="a:1"
            ),
            series(
                "lakeferry_end_to_end_seconds_bucket", "0+10x40", job="lf2", le="10", instance="a:1"
            ),
            series(
                "lakeferry_end_to_end_seconds_bucket",
                "0+10x40",
                job="lf2",
                le="+Inf",
                instance="a:1",
            ),
        ],
        [("30m", "LakeferryEndToEndLatencyHigh", [alert({"severity": "warning"})])],
    ),
    "late retries": (
        [
            series("lakeferry_retry_lateness_seconds_bucket", "0x40", le="60", instance="a:1"),
            series("lakeferry_retry_lateness_seconds_bucket", "0+5x40", le="120", instance="a:1"),
            series("lakeferry_retry_lateness_seconds_bucket", "0+5x40", le="+Inf", instance="a:1"),
        ],
        [("35m", "LakeferryRetryLate", [alert({"instance": "a:1", "severity": "warning"})])],
    ),
    "a stage keeps crashing": (
        [
            series(
                "lakeferry_stage_restarts_total", "0 1 2 3 4 5 5 5", instance="a:1", stage="upload"
            ),
            series(
                "lakeferry_stage_restarts_total", "0 1 1 1 1 1 1 1", instance="b:1", stage="upload"
            ),
        ],
        [
            (
                "7m",
                "LakeferryStageRestarting",
                [alert({"instance": "a:1", "stage": "upload", "severity": "warning"})],
            )
        ],
    ),
    "bus errors persist": (
        [series("lakeferry_bus_errors_total", "0+1x30", instance="a:1", op="inventory")],
        [
            (
                "20m",
                "LakeferryBusErrors",
                [alert({"instance": "a:1", "op": "inventory", "severity": "warning"})],
            )
        ],
    ),
    "a dead letter waits for a day": (
        [
            # Job lf: one letter dead-lettered 60 s after the epoch, still there; job lf2: its
            # oldest letter always a minute old (replayed as they come); job lf3: none (0).
            series("lakeferry_dlq_oldest_letter_timestamp_seconds", "60x1500", instance="a:1"),
            series(
                "lakeferry_dlq_oldest_letter_timestamp_seconds",
                "0+60x1500",
                job="lf2",
                instance="a:1",
            ),
            series(
                "lakeferry_dlq_oldest_letter_timestamp_seconds",
                "0x1500",
                job="lf3",
                instance="a:1",
            ),
        ],
        [
            ("1400m", "LakeferryDeadLetterWaitingLong", []),
            ("1460m", "LakeferryDeadLetterWaitingLong", [alert({"severity": "warning"})]),
        ],
    ),
    "breaker open": (
        [series("lakeferry_upload_breaker_open", "0 0 1x10", instance="a:1")],
        [
            (
                "10m",
                "LakeferryUploadBreakerOpen",
                [alert({"instance": "a:1", "severity": "warning"})],
            )
        ],
    ),
    "reload refused": (
        [
            series("lakeferry_reloads_total", "0 0 1x10", instance="a:1", result="refused"),
            series("lakeferry_reloads_total", "0 0 1x10", instance="b:1", result="applied"),
        ],
        [("5m", "LakeferryReloadRefused", [alert({"instance": "a:1", "severity": "warning"})])],
    ),
    "restart pending": (
        [series("lakeferry_config_restart_pending", "0 1x70", instance="a:1")],
        [
            ("30m", "LakeferryConfigRestartPending", []),
            (
                "65m",
                "LakeferryConfigRestartPending",
                [alert({"instance": "a:1", "severity": "info"})],
            ),
        ],
    ),
}


def test_every_alert_has_a_firing_case() -> None:
    _head, rules = alert_rules()
    tested = {
        name for _series, checks in ALERT_CASES.values() for _t, name, alerts in checks if alerts
    }
    assert sorted(rule.name for rule in rules if rule.name not in tested) == []


@pytest.fixture(scope="module")
def rules_without_annotations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alerts.yml minus annotations: the cases judge when alerts fire, not their wording
    (promtool compares annotations verbatim; `promtool check rules` checks their templates)."""
    head, rules = alert_rules()
    path = tmp_path_factory.mktemp("rules") / "alerts.yml"
    path.write_text(
        "\n".join(head + [line for r in rules for line in r.without_annotations()]) + "\n"
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ALERT_CASES))
def test_alert_fires_when_it_should(
    case: str, rules_without_annotations: Path, tmp_path: Path
) -> None:
    input_series, checks = ALERT_CASES[case]
    spec = {
        "rule_files": [str(rules_without_annotations)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    {"eval_time": at, "alertname": name, "exp_alerts": alerts}
                    for at, name, alerts in checks
                ],
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    result = run_promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- a live scrape -----------------------------------------------------------------------------


@pytest.fixture
def scrape(daemon_env: DaemonEnv, origin: Origin) -> Iterator[str]:
    """/metrics of a daemon that landed files, retried one and dead-lettered one."""
    env = daemon_env
    daemon = env.start()
    events = [
        {"id": f"obs-{i}", "url": origin.file_url(f"obs-{i}.bin", 2048 + i)} for i in range(8)
    ]
    events.append(
        {"id": "obs-flaky", "url": origin.file_url("obs-f.bin", 3000, route="flaky", fail=1)}
    )
    events.append({"id": "obs-gone", "url": f"{origin.url}/missing/obs-gone.bin"})
    env.submit_events(events)
    wait_until(
        lambda: (
            env.metric("lakeferry_stage_messages_total", stage="results") >= 9
            and env.metric("lakeferry_dlq_total") >= 1
        ),
        timeout=60,
        what="the events to land or die",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{env.metrics_port}/metrics", timeout=5) as r:
        yield r.read().decode()
    assert daemon.terminate() == 0


def test_live_scrape_passes_promtool_check_metrics(scrape: str) -> None:
    result = run_promtool("check", "metrics", stdin=scrape)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # The scrape has real observations, not just declared families.
    counts = {
        line.split()[0]: float(line.split()[1])
        for line in scrape.splitlines()
        if line and not line.startswith("#") and "_count" in line.split()[0]
    }
    for histogram in (
        'lakeferry_stage_duration_seconds_count{stage="download"}',
        "lakeferry_end_to_end_seconds_count",
        'lakeferry_delta_commit_seconds_count{table="inventory"}',
        'lakeferry_retry_lateness_seconds_count{rung="retry.200ms"}',
    ):
        assert counts.get(histogram, 0) > 0, histogram


def test_live_scrape_matches_the_registry(scrape: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    samples = exported_samples()
    live = {
        s.name: set(s.labels) for f in text_string_to_metric_families(scrape) for s in f.samples
    }
    assert sorted(set(live) - set(samples)) == []
    for name, labels in live.items():
        assert labels <= samples[name], name
    assert "lakeferry_consumer_lag" in live
    assert live["lakeferry_consumer_lag"] == {"group", "topic", "partition"}
