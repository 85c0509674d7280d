#!/usr/bin/env python3
"""Dashboards as code: renders grafana/dashboards/*.json from the definitions below.

    python grafana/build.py          # rewrite the JSON files
    python grafana/build.py --check  # exit 1 if the committed JSON differs from what this renders

Standard library only, deterministic output (sorted keys, fixed ids), so a rebuild reproduces the
committed files byte for byte and reviews show real changes. Queries use the dashboard variables
`$job` and `$instance` and Grafana's `$__rate_interval`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job",instance=~"$instance"'
RATE = "$__rate_interval"
SCHEMA_VERSION = 39


def rate(metric: str, extra: str = "", by: str = "") -> str:
    """sum [by (...)] (rate(metric{selector}[$__rate_interval]))"""
    labels = f"{SEL},{extra}" if extra else SEL
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{labels}}}[{RATE}]))"


def quantile(q: float, histogram: str, by: str = "", extra: str = "") -> str:
    grouping = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', extra, grouping)})"


@dataclass
class Target:
    expr: str
    legend: str = ""

    def render(self, ref_id: str) -> dict[str, Any]:
        return {"datasource": DATASOURCE, "expr": self.expr, "legendFormat": self.legend or "__auto",
                "range": True, "refId": ref_id}


@dataclass
class Panel:
    title: str
    targets: list[Target]
    description: str
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat
    width: int = 8
    height: int = 8
    stack: bool = False
    min_zero: bool = True
    thresholds: list[tuple[float | None, str]] = field(default_factory=lambda: [(None, "green")])
    text_mode: str = "auto"

    def render(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "unit": self.unit,
            "thresholds": {"mode": "absolute",
                           "steps": [{"color": color, "value": value} for value, color in self.thresholds]},
            "color": {"mode": "palette-classic" if self.kind == "timeseries" else "thresholds"},
        }
        if self.min_zero:
            defaults["min"] = 0
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if self.stack else 10,
                "showPoints": "never", "spanNulls": False,
                "stacking": {"mode": "normal" if self.stack else "none", "group": "A"},
            }
            options: dict[str, Any] = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        else:
            options = {
                "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
                "textMode": self.text_mode, "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            }
        return {
            "datasource": DATASOURCE,
            "description": self.description,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "id": panel_id,
            "options": options,
            "targets": [t.render(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
            "title": self.title,
            "type": self.kind,
        }


@dataclass
class Row:
    title: str
    panels: list[Panel]


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[Row]
    tags: list[str] = field(default_factory=lambda: ["mssql-mcp"])

    def render(self) -> dict[str, Any]:
        panels: list[dict[str, Any]] = []
        next_id, y = 1, 0
        for row in self.rows:
            panels.append({"collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "id": next_id,
                           "panels": [], "title": row.title, "type": "row"})
            next_id, y = next_id + 1, y + 1
            x, row_height = 0, 0
            for panel in row.panels:
                if x + panel.width > 24:  # wrap to the next line of the row
                    x, y, row_height = 0, y + row_height, 0
                panels.append(panel.render(next_id, x, y))
                next_id += 1
                x += panel.width
                row_height = max(row_height, panel.height)
            y += row_height
        return {
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard"}]},
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "id": None,
            "links": [],
            "panels": panels,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "tags": self.tags,
            "templating": {"list": _variables()},
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
            "weekStart": "",
        }


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "allValue": ".+", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "datasource": DATASOURCE, "hide": 0, "includeAll": True, "label": label,
            "multi": True, "name": name, "options": [], "query": {"qryType": 1, "query": query, "refId": "vars"},
            "refresh": 2, "regex": "", "skipUrlSync": False, "sort": 1, "type": "query",
        }

    return [
        {"current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False,
         "name": "datasource", "options": [], "query": "prometheus", "refresh": 1, "regex": "",
         "skipUrlSync": False, "type": "datasource"},
        query_var("job", "Job", "label_values(mssql_mcp_build_info, job)"),
        query_var("instance", "Instance", 'label_values(mssql_mcp_build_info{job=~"$job"}, instance)'),
    ]


RED_AT = [(None, "green"), (1, "red")]
RATIO_THRESHOLDS = [(None, "green"), (0.05, "orange"), (0.2, "red")]
SATURATION_THRESHOLDS = [(None, "green"), (0.8, "orange"), (1, "red")]


# Outcomes that are the service's fault (the MssqlMcpToolErrorRate alert counts the same ones) and outcomes that
# are the caller's: the read-only guard or the role refused the statement, or the arguments were invalid. A model
# trying a DELETE is not an outage, so the two are shown apart.
SERVICE_ERROR_OUTCOMES = ("error", "timeout", "busy", "unavailable")
CALLER_MISTAKE_OUTCOMES = ("refused", "invalid")


def outcome_matcher(outcomes: tuple[str, ...]) -> str:
    return f'outcome=~"{"|".join(outcomes)}"'


def overview() -> Dashboard:
    service_errors = outcome_matcher(SERVICE_ERROR_OUTCOMES)
    caller_mistakes = outcome_matcher(CALLER_MISTAKE_OUTCOMES)
    tool_errors = rate("mssql_mcp_tool_calls_total", service_errors)
    tool_all = rate("mssql_mcp_tool_calls_total")
    tool_errors_by_tool = rate("mssql_mcp_tool_calls_total", service_errors, by="tool")
    tool_mistakes = rate("mssql_mcp_tool_calls_total", caller_mistakes)
    hits, misses = rate("mssql_mcp_fetch_cache_hits_total"), rate("mssql_mcp_fetch_cache_misses_total")
    return Dashboard(
        uid="mssql-mcp-overview",
        title="MSSQL MCP Server",
        description="Token rate, tool calls and errors, query latency, pool saturation, refusals, sessions, "
                    "HTTP status mix and sign-in failures of the MSSQL MCP Server.",
        rows=[
            Row("Overview", [
                Panel("Instances up", [Target(f"sum(up{{{SEL}}})", "up")], "Scrape targets answering.",
                      kind="stat", width=4, height=4, thresholds=[(None, "red"), (1, "green")]),
                Panel("Database up", [Target(f"min(mssql_mcp_database_up{{{SEL}}})", "database")],
                      "1 when the last connection attempt to the database succeeded.", kind="stat", width=4,
                      height=4, thresholds=[(None, "red"), (1, "green")]),
                Panel("MCP sessions", [Target(f'sum(mssql_mcp_sessions{{{SEL},state="active"}})', "active"),
                                       Target(f'sum(mssql_mcp_sessions{{{SEL},state="idle"}})', "idle")],
                      "Open Streamable HTTP and SSE sessions: active = used within MCP_SESSION_ACTIVE_SECONDS "
                      "(5 min by default), streaming or running a call; idle = unused since, kept until "
                      "MCP_SESSION_IDLE_SECONDS (1 h) in case the client comes back.", kind="stat", width=4,
                      height=4),
                Panel("Tool calls", [Target(tool_all, "calls/s")], "Tool calls per second.", unit="reqps",
                      kind="stat", width=4, height=4),
                Panel("Tool error ratio", [Target(f"{tool_errors} / {tool_all}", "errors")],
                      "Share of tool calls the service failed (error, timeout, busy, unavailable). Refusals "
                      "and invalid arguments are the caller's and are shown apart.", unit="percentunit",
                      kind="stat", width=4, height=4, thresholds=RATIO_THRESHOLDS),
                Panel("Version", [Target(f"count by (version) (mssql_mcp_build_info{{{SEL}}})", "{{version}}")],
                      "Running versions (number of instances per version).", kind="stat", width=4, height=4,
                      text_mode="name"),
            ]),
            Row("MCP and tools", [
                Panel("Tool calls by tool", [Target(rate("mssql_mcp_tool_calls_total", by="tool"), "{{tool}}")],
                      "Tool calls per second by tool.", unit="reqps", stack=True),
                Panel("Tool calls by outcome",
                      [Target(rate("mssql_mcp_tool_calls_total", by="outcome"), "{{outcome}}")],
                      "ok, error, refused (read-only guard or role), timeout, cancelled, busy (pool), "
                      "unavailable (database down), invalid (bad arguments).", unit="reqps", stack=True),
                Panel("Tool error rate", [
                    Target(f"{tool_errors} / {tool_all}", "service errors, all tools"),
                    Target(f"{tool_errors_by_tool} / {rate('mssql_mcp_tool_calls_total', by='tool')}", "{{tool}}"),
                    Target(f"{tool_mistakes} / {tool_all}", "refused or invalid (caller)"),
                ], "Share of tool calls the service failed, by tool, and apart from them the share the caller got "
                   "wrong (refused by the guard or role, invalid arguments: model mistakes, not outages).",
                      unit="percentunit", thresholds=RATIO_THRESHOLDS),
                Panel("Tool latency p95 by tool",
                      [Target(quantile(0.95, "mssql_mcp_tool_call_duration_seconds", by="tool"), "{{tool}}")],
                      "95th percentile of tool call duration.", unit="s"),
                Panel("Sessions by transport and state",
                      [Target(f'sum by (transport) (mssql_mcp_sessions{{{SEL},state="active"}})',
                              "{{transport}} active"),
                       Target(f'sum by (transport) (mssql_mcp_sessions{{{SEL},state="idle"}})',
                              "{{transport}} idle")],
                      "Open MCP sessions, stacked: active ones (used within MCP_SESSION_ACTIVE_SECONDS, streaming "
                      "or running a call) and idle ones (probably abandoned, forgotten after "
                      "MCP_SESSION_IDLE_SECONDS). The stack's top is every open session.", stack=True),
                Panel("MCP messages by method",
                      [Target(rate("mssql_mcp_messages_total", by="method"), "{{method}}")],
                      "JSON-RPC messages received per second.", unit="reqps", stack=True),
                Panel("Streams dropped",
                      [Target(rate("mssql_mcp_streams_dropped_total", by="transport"), "{{transport}}")],
                      "Event streams cut because the client stopped reading and its queue filled "
                      "(MCP_STREAM_MAX_MESSAGES / MCP_STREAM_MAX_BYTES).", unit="reqps", stack=True),
            ]),
            Row("Queries", [
                Panel("Query latency", [
                    Target(quantile(0.5, "mssql_mcp_query_duration_seconds"), "p50"),
                    Target(quantile(0.95, "mssql_mcp_query_duration_seconds"), "p95"),
                    Target(quantile(0.99, "mssql_mcp_query_duration_seconds"), "p99"),
                ], "Database query duration percentiles (execute and fetch).", unit="s"),
                Panel("Queries by outcome",
                      [Target(rate("mssql_mcp_query_duration_seconds_count", by="outcome"), "{{outcome}}")],
                      "Queries per second by outcome.", unit="reqps", stack=True),
                Panel("Read-only refusals by reason",
                      [Target(rate("mssql_mcp_guard_refusals_total", by="reason"), "{{reason}}")],
                      "Statements refused by the read-only guard.", unit="reqps", stack=True),
                Panel("Rows returned", [Target(rate("mssql_mcp_rows_returned_total"), "rows/s")],
                      "Rows returned to callers per second.", unit="rowsps"),
                Panel("Result bytes", [Target(rate("mssql_mcp_result_bytes_total"), "bytes/s")],
                      "Bytes of row data returned to callers per second.", unit="Bps"),
                Panel("Truncations, timeouts, cancels", [
                    Target(rate("mssql_mcp_truncations_total", by="reason"), "truncated: {{reason}}"),
                    Target(rate("mssql_mcp_query_timeouts_total"), "timeouts"),
                    Target(rate("mssql_mcp_query_cancels_total"), "cancels"),
                ], "Results cut by the row/byte cap, queries stopped by the time limit or cancelled.",
                    unit="reqps"),
            ]),
            Row("Connection pool", [
                Panel("Pool saturation",
                      [Target(f"max(mssql_mcp_pool_in_use{{{SEL}}} / mssql_mcp_pool_size{{{SEL}}})", "in use")],
                      "Connections running a call / pool size (1 = every connection busy).", unit="percentunit",
                      thresholds=SATURATION_THRESHOLDS),
                Panel("Pool wait time", [
                    Target(quantile(0.5, "mssql_mcp_pool_wait_seconds"), "p50"),
                    Target(quantile(0.95, "mssql_mcp_pool_wait_seconds"), "p95"),
                    Target(quantile(0.99, "mssql_mcp_pool_wait_seconds"), "p99"),
                ], "Time calls waited for a free connection.", unit="s"),
                Panel("Pool connections", [
                    Target(f"sum(mssql_mcp_pool_size{{{SEL}}})", "size"),
                    Target(f"sum(mssql_mcp_pool_in_use{{{SEL}}})", "in use"),
                    Target(f"sum(mssql_mcp_pool_waiting{{{SEL}}})", "waiting"),
                ], "Pool size, connections in use and calls waiting."),
                Panel("Reconnects and busy rejections", [
                    Target(rate("mssql_mcp_pool_reconnects_total"), "reconnects"),
                    Target(rate("mssql_mcp_pool_busy_rejections_total"), "busy rejections"),
                ], "Connections replaced after a failure; calls refused because no connection freed up.",
                    unit="reqps"),
            ]),
            Row("OAuth and sign-in", [
                Panel("Token rate by grant",
                      [Target(rate("mssql_mcp_oauth_tokens_issued_total", by="grant"), "{{grant}}")],
                      "Access tokens issued per second by grant type.", unit="reqps", stack=True),
                Panel("Login failures by reason",
                      [Target(rate("mssql_mcp_login_failures_total", by="reason"), "{{reason}}")],
                      "Failed sign-ins per second (bad password, unknown user, throttled).", unit="reqps",
                      stack=True),
                Panel("Token endpoint errors",
                      [Target(rate("mssql_mcp_oauth_token_errors_total", by="error"), "{{error}}")],
                      "Token endpoint errors by OAuth error code.", unit="reqps", stack=True),
                Panel("Client registrations",
                      [Target(rate("mssql_mcp_oauth_registrations_total", by="outcome"), "{{outcome}}")],
                      "Dynamic client registrations per second.", unit="reqps", stack=True),
                Panel("Bearer rejections",
                      [Target(rate("mssql_mcp_bearer_rejections_total", by="reason"), "{{reason}}")],
                      "MCP requests refused by the bearer check (missing, expired, wrong audience ...).",
                      unit="reqps", stack=True),
                Panel("Refresh token reuse", [Target(rate("mssql_mcp_oauth_refresh_reuse_total"), "reuse")],
                      "Reuse of a rotated refresh token (the token family is revoked): possible token theft.",
                      unit="reqps", thresholds=[(None, "green"), (0.0001, "red")]),
            ]),
            Row("HTTP", [
                Panel("HTTP status mix", [Target(rate("mssql_mcp_http_requests_total", by="status"), "{{status}}")],
                      "Requests per second by status class.", unit="reqps", stack=True),
                Panel("HTTP latency p95 by route",
                      [Target(quantile(0.95, "mssql_mcp_http_request_duration_seconds", by="route",
                                       extra='method!="GET"'), "{{route}}")],
                      "95th percentile of request duration (GET left out: it includes long-lived SSE streams).",
                      unit="s"),
                Panel("Requests in flight",
                      [Target(f"sum(mssql_mcp_http_requests_in_flight{{{SEL}}})", "in flight")],
                      "Requests being handled, open SSE streams included."),
                Panel("Event loop lag", [
                    Target(quantile(0.99, "mssql_mcp_event_loop_lag_seconds"), "p99"),
                    Target(f"max(mssql_mcp_event_loop_lag_max_seconds{{{SEL}}})", "worst since start"),
                    Target(quantile(0.99, "mssql_mcp_event_loop_blocked_seconds"), "blocked p99"),
                    Target(f"max(mssql_mcp_event_loop_blocked_max_seconds{{{SEL}}})", "blocked, worst since start"),
                ], "How late the event loop ran a 100 ms timer; blocked: that lag less the time its thread waited "
                   "for a CPU, the time the process's own work held it (keep under 10 ms).",
                    unit="s"),
            ]),
            Row("Fetch cache and process", [
                Panel("Fetch cache hit ratio", [Target(f"{hits} / ({hits} + {misses})", "hit ratio")],
                      "Share of ChatGPT fetch calls served from the cache.", unit="percentunit",
                      thresholds=[(None, "orange"), (0.5, "green")]),
                Panel("Fetch cache lookups",
                      [Target(hits, "hits"), Target(misses, "misses")],
                      "fetch calls served from the cache (hits) or by querying the database (misses).",
                      unit="reqps"),
                Panel("Process memory", [
                    Target(f"sum by (instance) (process_resident_memory_bytes{{{SEL}}})", "RSS {{instance}}"),
                ], "Resident memory of the service process.", unit="bytes"),
                Panel("Process CPU", [Target(rate("process_cpu_seconds_total", by="instance"), "{{instance}}")],
                      "CPU seconds per second used by the service process.", unit="percentunit"),
            ]),
        ],
    )


DASHBOARDS = {"mssql-mcp-overview.json": overview}


def render_all() -> dict[str, str]:
    """File name -> exact JSON text."""
    return {name: json.dumps(build().render(), indent=2, sort_keys=True) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is out of date")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(exist_ok=True)
    stale = []
    for name, text in render_all().items():
        path = OUT_DIR / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python grafana/build.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
