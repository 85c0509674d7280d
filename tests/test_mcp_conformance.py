"""The official MCP conformance suite (npm @modelcontextprotocol/conformance) against our live servers.

Skipped unless `make conformance` (mk/conformance.mk) installed Node 22 and the suite and set
MCP_CONFORMANCE_BIN / MCP_CONFORMANCE_NODE_DIR. Each case lists the checks expected to fail and why;
the test fails when anything else fails, or when an expected failure starts passing (update docs/mcp.md).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest

from app.mcp.tools import Tool, ToolError

CONFORMANCE_BIN = os.environ.get("MCP_CONFORMANCE_BIN", "")
NODE_DIR = os.environ.get("MCP_CONFORMANCE_NODE_DIR", "")
pytestmark = pytest.mark.skipif(not CONFORMANCE_BIN, reason="run `make conformance` (needs Node 22 and the suite)")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(r"Passed: (\d+)/(\d+), (\d+) failed")
_FAILED_CHECK = re.compile(r"\[([A-Za-z0-9_.:-]+)\s*\]\s*FAILURE")

# The suite's diagnostic tools (test_missing_capability, test_streaming_elicitation) need features a
# database server has no use for: tools that require client capabilities, and elicitation.
NEEDS_DIAGNOSTIC_TOOLS = {"sep-2575-server-rejects-undeclared-capability", "sep-2575-missing-capability-http-400",
                          "sep-2575-http-server-no-independent-requests-on-stream"}
# We serve tools only; prompts/* and resources/* answer -32601 and are not advertised.
NO_PROMPTS_OR_RESOURCES = {"sep-2549-prompts-list-caching-hints", "sep-2549-resources-list-caching-hints",
                           "sep-2549-resources-templates-list-caching-hints"}

# (scenario, spec version or None for the suite's default, checks expected to fail) on the real app.
REAL_APP_CASES = [
    ("server-initialize", None, set()),
    ("server-session-lifecycle", None, set()),
    ("logging-set-level", None, set()),
    ("ping", None, set()),
    ("tools-list", None, set()),
    ("tools-list", "2026-07-28", set()),
    ("dns-rebinding-protection", None, set()),
    ("dns-rebinding-protection", "2026-07-28", set()),
    ("http-header-validation", "2026-07-28", set()),
    ("server-sse-multiple-streams", None, set()),
    ("server-stateless", "2026-07-28", NEEDS_DIAGNOSTIC_TOOLS | {"sep-2575-server-no-log-without-loglevel"}),
    ("caching", "2026-07-28", NO_PROMPTS_OR_RESOURCES),
]
# Scenarios that need the suite's named fixture tools, run on a bare McpServer offering them.
FIXTURE_CASES = [
    ("tools-call-with-logging", None, set()),
    ("tools-call-with-progress", None, set()),
    ("tools-call-with-progress", "2026-07-28", set()),
    ("tools-call-error", None, set()),
    ("tools-call-error", "2026-07-28", set()),
    ("json-schema-2020-12", None, set()),
    ("json-schema-2020-12", "2026-07-28", set()),
    ("server-stateless", "2026-07-28", NEEDS_DIAGNOSTIC_TOOLS),
]

JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                   "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                   "phone": {"type": "string"}, "email": {"type": "string"}},
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]}, "else": {"required": ["email"]},
    "additionalProperties": False,
}


def _fixture_tools() -> list[Tool]:
    async def with_logging(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        for message in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.log("info", message)
            await asyncio.sleep(0.05)
        return {"status": "completed"}

    async def with_progress(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        for done in (0, 50, 100):
            await ctx.report_progress(done, 100, None)
            await asyncio.sleep(0.05)
        return {"status": "completed"}

    async def error(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        raise ToolError("This tool intentionally returns an error for testing")

    async def logging_tool(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        await ctx.log("error", "only sent when the request asked for log messages")
        return {"status": "completed"}

    async def schema_tool(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"received": arguments}

    empty = {"type": "object", "properties": {}}
    return [
        Tool("test_tool_with_logging", "Logging", "Sends three info log messages.", empty, with_logging),
        Tool("test_tool_with_progress", "Progress", "Reports 0, 50 and 100 of 100.", empty, with_progress),
        Tool("test_error_handling", "Error", "Always fails.", empty, error),
        Tool("test_logging_tool", "Logs", "Logs one message.", empty, logging_tool),
        Tool("json_schema_2020_12_tool", "Schema", "Tool with JSON Schema 2020-12 features", JSON_SCHEMA_2020_12,
             schema_tool),
    ]


async def _run(url: str, scenario: str, spec_version: str | None) -> tuple[str, set[str]]:
    args = [CONFORMANCE_BIN, "server", "--url", url, "--scenario", scenario]
    if spec_version:
        args += ["--spec-version", spec_version]
    env = {**os.environ, "PATH": f"{NODE_DIR}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT, env=env)
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    text = _ANSI.sub("", output.decode(errors="replace"))
    summary = _SUMMARY.search(text)
    assert summary is not None, text[-3000:]  # the suite exits 0 even when checks fail: read its summary
    return summary.group(0), set(_FAILED_CHECK.findall(text))


@pytest.mark.parametrize(("scenario", "spec_version", "expected"), REAL_APP_CASES)
async def test_real_app(live_server: Any, scenario: str, spec_version: str | None, expected: set[str]) -> None:
    summary, failed = await _run(live_server.url + "/mcp", scenario, spec_version)
    assert failed == expected, f"{scenario} ({spec_version or 'default'}): {summary}"


@pytest.mark.parametrize(("scenario", "spec_version", "expected"), FIXTURE_CASES)
async def test_fixture_tools(mcp_test_app: Any, start_live_server: Any, scenario: str, spec_version: str | None,
                             expected: set[str]) -> None:
    server = await start_live_server(mcp_test_app(tools=_fixture_tools()).app)
    summary, failed = await _run(server.url + "/mcp", scenario, spec_version)
    assert failed == expected, f"{scenario} ({spec_version or 'default'}): {summary}"
