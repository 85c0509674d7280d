"""Dashboards as code, provisioning, Prometheus config and alert rules (checked offline with promtool)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.core import TOOL_OUTCOMES
from app.obs.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
PROMETHEUS = GRAFANA / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))


def _load_build() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


build = _load_build()


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def known_metric_names() -> set[str]:
    metrics = Metrics()
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names | {"up"}


METRIC_NAME = re.compile(r"\b((?:mssql_mcp|process)_[a-z_]+|up)\s*\{")


def test_rebuilding_reproduces_the_committed_json() -> None:
    rendered = build.render_all()
    committed = {path.name: path.read_text() for path in (GRAFANA / "dashboards").glob("*.json")}
    assert rendered == committed, "run: python grafana/build.py"
    assert build.main(["--check"]) == 0


def test_dashboard_shape() -> None:
    for name, dashboard in dashboards().items():
        assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36, name
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                    cells.add((x, y))
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and panel["description"], panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert variables == {"datasource", "job", "instance"}


def test_dashboard_has_the_required_panels() -> None:
    titles = {title for dashboard in dashboards().values() for title, _ in panel_targets(dashboard)}
    for required in (
        "Token rate by grant",
        "Fetch cache hit ratio",
        "Query latency",
        "Tool error rate",
        "Read-only refusals by reason",
        "Pool saturation",
        "Pool wait time",
        "Sessions by transport and state",
        "HTTP status mix",
        "Login failures by reason",
    ):
        assert required in titles
    [(_, *latency)] = [
        [t["legendFormat"] for t in p["targets"]]
        for d in dashboards().values()
        for p in d["panels"]
        if p["title"] == "Query latency"
    ]
    assert latency == ["p95", "p99"]


def test_every_queried_metric_exists() -> None:
    """A typo in a metric name would give an empty panel forever; catch it here."""
    known = known_metric_names()
    exprs = [expr for d in dashboards().values() for _, expr in panel_targets(d)]
    exprs += [line for path in RULES for line in path.read_text().splitlines()]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used, "no metric names found"
    assert used <= known, sorted(used - known)


def test_dashboards_decode_with_grafana_schema_models() -> None:
    """Offline validation: Grafana's own schema models (grafana-foundation-sdk) decode every field we emit."""
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import prometheus, stat, timeseries
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

    plugins.register_default_plugins()
    for name, data in dashboards().items():
        model = Dashboard.from_json(data)
        for panel in model.panels or []:
            assert isinstance(panel, Panel | RowPanel), name
            if isinstance(panel, RowPanel):
                continue
            assert isinstance(panel.options, {"stat": stat.Options, "timeseries": timeseries.Options}[panel.type_val])
            assert all(isinstance(t, prometheus.Dataquery) for t in panel.targets or [])
        encoded = json.loads(json.dumps(model, cls=JSONEncoder))
        lost = sorted(_lost_paths(data, encoded))
        # Only fields the models don't carry but Grafana accepts: the null id and the built-in annotation flag.
        assert lost == ["/annotations/list/0/builtIn", "/id"], lost


def _lost_paths(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}" for k in a if k not in b]
        for key in a.keys() & b.keys():
            out += _lost_paths(a[key], b[key], f"{path}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in _lost_paths(x, y, f"{path}/{i}")]
    return []


def test_provisioning_points_at_the_dashboards() -> None:
    datasource = (GRAFANA / "provisioning" / "datasources" / "mssql-mcp.yml").read_text()
    assert "type: prometheus" in datasource and "apiVersion: 1" in datasource
    provider = (GRAFANA / "provisioning" / "dashboards" / "mssql-mcp.yml").read_text()
    assert "type: file" in provider and "path: /var/lib/grafana/dashboards/mssql-mcp" in provider


def _promtool(*args: str, cwd: Path = ROOT) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool (Debian package 'prometheus') is required")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_promtool_checks_config_and_rules() -> None:
    assert "SUCCESS" in _promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "SUCCESS: 9 rules found" in _promtool("check", "rules", *map(str, RULES))


def test_promtool_rule_unit_tests() -> None:
    assert "SUCCESS" in _promtool(
        "test", "rules", *(str(p.relative_to(PROMETHEUS)) for p in RULE_TESTS), cwd=PROMETHEUS
    )


def test_every_alert_has_a_unit_test_and_a_runbook_entry() -> None:
    alerts = {name for path in RULES for name in re.findall(r"- alert: (\w+)", path.read_text())}
    tested = {name for path in RULE_TESTS for name in re.findall(r"alertname: (\w+)", path.read_text())}
    assert alerts == tested
    assert {
        "MssqlMcpInstanceDown",
        "MssqlMcpPoolSaturated",
        "MssqlMcpToolErrorRate",
        "MssqlMcpQueryLatencyHigh",
        "MssqlMcpLoginFailureBurst",
    } <= alerts
    docs = (ROOT / "docs" / "observability.md").read_text()
    for alert in alerts:
        assert f"### {alert}" in docs, alert


def test_dashboard_error_ratio_counts_what_the_alert_counts() -> None:
    """The overview's error ratio and the tool error alert agree on which outcomes are the service's fault;
    refusals and invalid arguments (model mistakes) are shown apart, not as errors."""
    build = _load_build()
    rules = "\n".join(path.read_text() for path in RULES)
    alert_outcomes = re.search(r'outcome=~"([a-z|]+)"', rules)
    assert alert_outcomes is not None
    assert set(alert_outcomes.group(1).split("|")) == set(build.SERVICE_ERROR_OUTCOMES)
    assert not set(build.SERVICE_ERROR_OUTCOMES) & set(build.CALLER_MISTAKE_OUTCOMES)
    # Every outcome is placed: ok and cancelled (the client gave up) are neither.
    assert {*build.SERVICE_ERROR_OUTCOMES, *build.CALLER_MISTAKE_OUTCOMES, "ok", "cancelled"} == set(TOOL_OUTCOMES)
    exprs = json.dumps(json.loads((GRAFANA / "dashboards" / "mssql-mcp-overview.json").read_text()))
    assert 'outcome!=\\"ok\\"' not in exprs  # no panel lumps refusals in with errors any more
    assert "refused|invalid" in exprs


def test_metrics_export_no_created_series() -> None:
    from prometheus_client import generate_latest

    text = generate_latest(Metrics().registry).decode()
    assert "mssql_mcp_tool_calls_total" in text
    assert "_created" not in text
