"""The official MCP conformance suite (npm @modelcontextprotocol/conformance) against our live servers.

Skipped unless `make conformance` (mk/conformance.mk) installed Node 22 and the suite and set
MCP_CONFORMANCE_BIN / MCP_CONFORMANCE_NODE_DIR.

Every server scenario the suite lists runs at every spec version it names, against a bare McpServer
offering the suite's fixture tools, resources and prompts (from this file, never from the product); the
scenarios that need no fixtures also run against the real app on the demo database. Each case lists the
checks expected to fail and why; the test fails when anything else fails, or when an expected failure
starts passing (then update the lists and docs/mcp.md). A test also fails when the suite's scenario list
differs from SCENARIOS, so a new suite version cannot add scenarios silently.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from app.core import Principal
from app.mcp.resources import (
    Prompt,
    PromptArgument,
    Resource,
    ResourceContents,
    ResourceNotFound,
    ResourceTemplate,
    text_message,
)
from app.mcp.tools import InputRequired, Tool, ToolContext, ToolError, ToolResult

CONFORMANCE_BIN = os.environ.get("MCP_CONFORMANCE_BIN", "")
NODE_DIR = os.environ.get("MCP_CONFORMANCE_NODE_DIR", "")
pytestmark = pytest.mark.skipif(not CONFORMANCE_BIN, reason="run `make conformance` (needs Node 22 and the suite)")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(r"Passed: (\d+)/(\d+), (\d+) failed")
_FAILED_CHECK = re.compile(r"\[([A-Za-z0-9_.:-]+)\s*\]\s*FAILURE")
_LISTED = re.compile(r"^\s*- ([a-z0-9-]+) \[([^\]]+)\]", re.MULTILINE)

# The suite's server scenarios and the spec versions each applies to (`conformance list --server`).
SCENARIOS: dict[str, tuple[str, ...]] = {
    "server-initialize": ("2025-06-18", "2025-11-25"),
    "server-session-lifecycle": ("2025-03-26", "2025-06-18", "2025-11-25"),
    "server-stateless": ("2026-07-28",),
    "logging-set-level": ("2025-06-18", "2025-11-25"),
    "ping": ("2025-06-18", "2025-11-25"),
    "completion-complete": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-list": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-call-simple-text": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-call-image": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-call-audio": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-call-embedded-resource": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-call-mixed-content": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-call-with-logging": ("2025-06-18", "2025-11-25"),
    "tools-call-error": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-call-with-progress": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "tools-call-sampling": ("2025-06-18", "2025-11-25"),
    "tools-call-elicitation": ("2025-06-18", "2025-11-25"),
    "json-schema-2020-12": ("2025-11-25", "2026-07-28"),
    "elicitation-sep1034-defaults": ("2025-11-25",),
    "server-sse-polling": ("2025-11-25",),
    "server-sse-multiple-streams": ("2025-11-25", "2026-07-28"),
    "elicitation-sep1330-enums": ("2025-11-25",),
    "resources-list": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "resources-read-text": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "resources-read-binary": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "resources-templates-read": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "resources-subscribe": ("2025-06-18", "2025-11-25"),
    "resources-unsubscribe": ("2025-06-18", "2025-11-25"),
    "sep-2164-resource-not-found": ("2026-07-28",),
    "sep-2640-skills-directory": ("extension",),
    "sep-2640-skills-enumeration": ("extension",),
    "sep-2640-skills-manifest": ("extension",),
    "prompts-list": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "prompts-get-simple": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "prompts-get-with-args": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "prompts-get-embedded-resource": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "prompts-get-with-image": ("2025-06-18", "2025-11-25", "2026-07-28"),
    "dns-rebinding-protection": ("2025-11-25", "2026-07-28"),
    "caching": ("2026-07-28",),
    "http-header-validation": ("2026-07-28",),
    "http-custom-header-server-validation": ("2026-07-28",),
    **{
        f"tasks-{name}": ("extension",)
        for name in (
            "lifecycle",
            "capability-negotiation",
            "wire-fields",
            "request-state-removal",
            "mrtr-input",
            "request-headers",
            "dispatch-and-envelope",
            "status-notifications",
            "required-task-error",
            "mrtr-composition",
        )
    },
    **{
        f"input-required-result-{name}": ("2026-07-28",)
        for name in (
            "basic-elicitation",
            "basic-sampling",
            "basic-list-roots",
            "request-state",
            "multiple-input-requests",
            "multi-round",
            "missing-input-response",
            "non-tool-request",
            "result-type",
            "unsupported-methods",
            "tampered-state",
            "capability-check",
            "ignore-extra-params",
            "validate-input",
        )
    },
}

# Checks expected to fail on the fixture server, by scenario, with the reason. Keep this short and true.
FIXTURE_EXPECTED: dict[str, set[str]] = {}
# Optional extensions (tasks, skills) this server does not offer: run for the record, not scored.
EXTENSION_SCENARIOS = {name for name, versions in SCENARIOS.items() if versions == ("extension",)}

# Scenarios that need no fixtures, on the real app (the product), with the checks expected to fail there.
# server-stateless probes the suite's diagnostic tools, which the product rightly does not have.
NEEDS_DIAGNOSTIC_TOOLS = {
    "sep-2575-server-rejects-undeclared-capability",
    "sep-2575-missing-capability-http-400",
    "sep-2575-http-server-no-independent-requests-on-stream",
    "sep-2575-server-no-log-without-loglevel",
}
REAL_APP_CASES = [
    ("server-initialize", "2025-11-25", set()),
    ("server-session-lifecycle", "2025-11-25", set()),
    ("logging-set-level", "2025-11-25", set()),
    ("ping", "2025-11-25", set()),
    ("tools-list", "2025-11-25", set()),
    ("tools-list", "2026-07-28", set()),
    ("resources-list", "2025-11-25", set()),
    ("resources-list", "2026-07-28", set()),
    ("prompts-list", "2025-11-25", set()),
    ("prompts-list", "2026-07-28", set()),
    ("sep-2164-resource-not-found", "2026-07-28", set()),
    ("dns-rebinding-protection", "2025-11-25", set()),
    ("dns-rebinding-protection", "2026-07-28", set()),
    ("http-header-validation", "2026-07-28", set()),
    ("server-sse-multiple-streams", "2025-11-25", set()),
    ("server-stateless", "2026-07-28", NEEDS_DIAGNOSTIC_TOOLS),
    ("caching", "2026-07-28", set()),
]

JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}
# A 1x1 red PNG and a 1-sample WAV: the smallest valid media for the content-type scenarios.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201e2b8a7d70000000049454e44ae426082"
    )
).decode()
WAV = base64.b64encode(
    b"RIFF"
    + (38).to_bytes(4, "little")
    + b"WAVEfmt "
    + (16).to_bytes(4, "little")
    + bytes.fromhex("01000100401f0000803e000002001000")
    + b"data"
    + (2).to_bytes(4, "little")
    + b"\x00\x00"
).decode()


def _text(text: str) -> ToolResult:
    return ToolResult([{"type": "text", "text": text}])


def _elicit(message: str, field: str, kind: str = "string") -> dict[str, Any]:
    return {
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": {"type": "object", "properties": {field: {"type": kind}}, "required": [field]},
        },
    }


def _sample(text: str, max_tokens: int = 100) -> dict[str, Any]:
    return {
        "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": {"type": "text", "text": text}}], "maxTokens": max_tokens},
    }


ROOTS = {"method": "roots/list", "params": {}}


def _answered(ctx: ToolContext, *keys: str) -> bool:
    return ctx.input_responses is not None and all(key in ctx.input_responses for key in keys)


def _input_required_tools() -> list[Tool]:
    """The SEP-2322 (InputRequiredResult) fixtures of the input-required-result-* and server-stateless scenarios."""

    async def elicitation(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if not _answered(ctx, "user_name"):  # also the answer to wrong or missing keys: ask again
            raise InputRequired({"user_name": _elicit("What is your name?", "name")})
        name = (ctx.input_responses or {})["user_name"].get("content", {}).get("name", "stranger")
        return _text(f"Hello, {name}!")

    async def sampling(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if not _answered(ctx, "capital_question"):
            raise InputRequired({"capital_question": _sample("What is the capital of France?")})
        answer = (ctx.input_responses or {})["capital_question"].get("content", {}).get("text", "")
        return _text(f"LLM response: {answer}")

    async def list_roots(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if not _answered(ctx, "client_roots"):
            raise InputRequired({"client_roots": ROOTS})
        roots = (ctx.input_responses or {})["client_roots"].get("roots", [])
        return _text("Roots: " + ", ".join(str(root.get("uri")) for root in roots))

    async def request_state(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if not _answered(ctx, "confirm") or ctx.request_state != {"asked": "confirm"}:
            raise InputRequired({"confirm": _elicit("Please confirm", "ok", "boolean")}, {"asked": "confirm"})
        return _text("Confirmed: state-ok")

    async def multiple(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        keys = ("user_name", "greeting", "client_roots")
        if not _answered(ctx, *keys) or ctx.request_state != {"asked": list(keys)}:
            raise InputRequired(
                {
                    "user_name": _elicit("What is your name?", "name"),
                    "greeting": _sample("Generate a greeting", 50),
                    "client_roots": ROOTS,
                },
                {"asked": list(keys)},
            )
        return _text("Received all three inputs")

    async def multi_round(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        state = ctx.request_state or {}
        if state.get("round") == 2 and _answered(ctx, "step2"):
            color = (ctx.input_responses or {})["step2"].get("content", {}).get("color")
            return _text(f"{state.get('name')} likes {color}")
        if state.get("round") == 1 and _answered(ctx, "step1"):
            name = (ctx.input_responses or {})["step1"].get("content", {}).get("name")
            raise InputRequired(
                {"step2": _elicit("Step 2: What is your favorite color?", "color")}, {"round": 2, "name": name}
            )
        raise InputRequired({"step1": _elicit("Step 1: What is your name?", "name")}, {"round": 1})

    async def capabilities(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        wanted = {"user_name": _elicit("What is your name?", "name"), "greeting": _sample("Say hello", 20)}
        declared = {
            key: request
            for key, request in wanted.items()
            if ("elicitation" if request["method"] == "elicitation/create" else "sampling") in ctx.client_capabilities
        }
        if not _answered(ctx, *declared):
            raise InputRequired(declared)
        return _text("Done with what the client supports")

    empty = {"type": "object", "properties": {}}
    prefix = "test_input_required_result_"
    return [
        Tool(prefix + "elicitation", "Elicit", "Asks the user's name.", empty, elicitation),
        Tool(prefix + "sampling", "Sample", "Asks the client's model.", empty, sampling),
        Tool(prefix + "list_roots", "Roots", "Asks the client's roots.", empty, list_roots),
        Tool(prefix + "request_state", "State", "Round-trips requestState.", empty, request_state),
        Tool(prefix + "tampered_state", "Tampered", "Round-trips signed requestState.", empty, request_state),
        Tool(prefix + "multiple_inputs", "Multiple", "Asks three things at once.", empty, multiple),
        Tool(prefix + "multi_round", "Rounds", "Asks twice.", empty, multi_round),
        Tool(prefix + "capabilities", "Capabilities", "Asks only what the client declared.", empty, capabilities),
        Tool("test_streaming_elicitation", "Streaming elicitation", "Asks the user's name.", empty, elicitation),
    ]


def _client_request_tools() -> list[Tool]:
    """Handshake-era fixtures that ask the client (sampling, elicitation): the same InputRequired as in
    2026-07-28, which the server turns into requests on the call's stream."""

    async def sampling(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if not _answered(ctx, "llm"):
            raise InputRequired({"llm": _sample(arguments.get("prompt", ""))})
        return _text(f"LLM response: {(ctx.input_responses or {})['llm'].get('content', {}).get('text', '')}")

    async def elicitation(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if not _answered(ctx, "user"):
            raise InputRequired(
                {
                    "user": {
                        "method": "elicitation/create",
                        "params": {
                            "message": arguments.get("message", ""),
                            "requestedSchema": {
                                "type": "object",
                                "properties": {
                                    "username": {"type": "string", "description": "User's response"},
                                    "email": {"type": "string", "description": "User's email address"},
                                },
                                "required": ["username", "email"],
                            },
                        },
                    }
                }
            )
        answer = (ctx.input_responses or {})["user"]
        return _text(f"User response: action={answer.get('action')}, content={answer.get('content')}")

    def elicit_with(schema: dict[str, Any]) -> Any:
        async def handler(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
            if not _answered(ctx, "form"):
                raise InputRequired(
                    {
                        "form": {
                            "method": "elicitation/create",
                            "params": {
                                "message": "Please review and update the form fields",
                                "requestedSchema": {"type": "object", "properties": schema},
                            },
                        }
                    }
                )
            answer = (ctx.input_responses or {})["form"]
            return _text(f"Elicitation completed: action={answer.get('action')}, content={answer.get('content')}")

        return handler

    defaults = {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
    }
    titled = [
        {"const": f"value{n}", "title": title}
        for n, title in ((1, "First Option"), (2, "Second Option"), (3, "Third Option"))
    ]
    enums = {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "oneOf": titled},
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": f"value{n}", "title": title}
                    for n, title in ((1, "First Choice"), (2, "Second Choice"), (3, "Third Choice"))
                ]
            },
        },
    }
    prompt = {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}
    message = {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
    empty = {"type": "object", "properties": {}}
    return [
        Tool("test_sampling", "Sampling", "Asks the client's model.", prompt, sampling),
        Tool("test_elicitation", "Elicitation", "Asks the user.", message, elicitation),
        Tool("test_elicitation_sep1034_defaults", "Defaults", "Asks with defaults.", empty, elicit_with(defaults)),
        Tool("test_elicitation_sep1330_enums", "Enums", "Asks with every enum form.", empty, elicit_with(enums)),
    ]


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

    async def simple_text(arguments: dict[str, Any], ctx: Any) -> ToolResult:
        return _text("This is a simple text response for testing.")

    async def image(arguments: dict[str, Any], ctx: Any) -> ToolResult:
        return ToolResult([{"type": "image", "data": PNG, "mimeType": "image/png"}])

    async def audio(arguments: dict[str, Any], ctx: Any) -> ToolResult:
        return ToolResult([{"type": "audio", "data": WAV, "mimeType": "audio/wav"}])

    async def embedded(arguments: dict[str, Any], ctx: Any) -> ToolResult:
        return ToolResult(
            [
                {
                    "type": "resource",
                    "resource": {
                        "uri": "test://embedded-resource",
                        "mimeType": "text/plain",
                        "text": "This is an embedded resource content.",
                    },
                }
            ]
        )

    async def mixed(arguments: dict[str, Any], ctx: Any) -> ToolResult:
        return ToolResult(
            [
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": PNG, "mimeType": "image/png"},
                {
                    "type": "resource",
                    "resource": {
                        "uri": "test://mixed-content-resource",
                        "mimeType": "application/json",
                        "text": '{"test":"data","value":123}',
                    },
                },
            ]
        )

    async def echo_region(arguments: dict[str, Any], ctx: Any) -> ToolResult:
        return _text(f"Region: {arguments['region']}")

    async def needs_sampling(arguments: dict[str, Any], ctx: Any) -> ToolResult:
        return _text("only reached when the client declared sampling")

    empty = {"type": "object", "properties": {}}
    return [
        Tool("test_tool_with_logging", "Logging", "Sends three info log messages.", empty, with_logging),
        Tool("test_tool_with_progress", "Progress", "Reports 0, 50 and 100 of 100.", empty, with_progress),
        Tool("test_error_handling", "Error", "Always fails.", empty, error),
        Tool("test_logging_tool", "Logs", "Logs one message.", empty, logging_tool),
        Tool(
            "json_schema_2020_12_tool",
            "Schema",
            "Tool with JSON Schema 2020-12 features",
            JSON_SCHEMA_2020_12,
            schema_tool,
        ),
        Tool("test_simple_text", "Text", "Returns one text block.", empty, simple_text),
        Tool("test_image_content", "Image", "Returns a PNG image.", empty, image),
        Tool("test_audio_content", "Audio", "Returns a WAV sound.", empty, audio),
        Tool("test_embedded_resource", "Embedded", "Returns an embedded resource.", empty, embedded),
        Tool("test_multiple_content_types", "Mixed", "Returns text, image and resource.", empty, mixed),
        Tool(
            "test_missing_capability",
            "Needs sampling",
            "Requires the client's sampling capability.",
            empty,
            needs_sampling,
            required_client_capabilities={"sampling": {}},
        ),
        Tool(
            "test_header_mirroring",
            "Region",
            "Echoes a region mirrored in the Mcp-Param-Region header.",
            {
                "type": "object",
                "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
                "required": ["region"],
            },
            echo_region,
        ),
        *_input_required_tools(),
        *_client_request_tools(),
    ]


class FixtureResources:
    """The suite's fixture resources: two static ones, a template, and a watched one for subscribe."""

    ttl_ms = 60_000
    subscribable = True

    STATIC = {
        "test://static-text": ResourceContents(
            "test://static-text", "text/plain", "This is the content of the static text resource."
        ),
        "test://static-binary": ResourceContents("test://static-binary", "image/png", blob=base64.b64decode(PNG)),
        "test://watched-resource": ResourceContents("test://watched-resource", "text/plain", "Watched."),
    }

    async def list_resources(self, *, caller: Principal | None = None) -> Sequence[Resource]:
        return [
            Resource(uri, uri.removeprefix("test://"), description=f"Fixture {uri}", mime_type=item.mime_type)
            for uri, item in self.STATIC.items()
        ]

    def list_templates(self) -> Sequence[ResourceTemplate]:
        return [
            ResourceTemplate(
                "test://template/{id}/data", "template", description="Data for one id", mime_type="application/json"
            )
        ]

    async def read(self, uri: str, *, caller: Principal | None = None) -> Sequence[ResourceContents]:
        if uri in self.STATIC:
            return [self.STATIC[uri]]
        match = re.fullmatch(r"test://template/([^/]+)/data", uri)
        if match is None:
            raise ResourceNotFound(uri)
        ident = match.group(1)
        return [
            ResourceContents(
                uri, "application/json", f'{{"id":"{ident}","templateTest":true,"data":"Data for ID: {ident}"}}'
            )
        ]

    async def complete(
        self,
        uri_template: str,
        argument: str,
        value: str,
        context: Mapping[str, str],
        *,
        caller: Principal | None = None,
    ) -> Sequence[str]:
        return ["123", "456"] if argument == "id" else []


def _fixture_prompts() -> list[Prompt]:
    async def simple(arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        return [text_message("This is a simple prompt for testing.")]

    async def with_arguments(arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        return [text_message(f"Prompt with arguments: arg1='{arguments['arg1']}', arg2='{arguments['arg2']}'")]

    async def complete_arguments(argument: str, value: str, context: Mapping[str, str]) -> Sequence[str]:
        return ["paris", "park", "party", "test", "testing"]

    async def embedded(arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        return [
            {
                "role": "user",
                "content": {
                    "type": "resource",
                    "resource": {
                        "uri": arguments["resourceUri"],
                        "mimeType": "text/plain",
                        "text": "Embedded resource content for testing.",
                    },
                },
            },
            text_message("Please process the embedded resource above."),
        ]

    async def image(arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": {"type": "image", "data": PNG, "mimeType": "image/png"}},
            text_message("Please analyze the image above."),
        ]

    async def needs_input(arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        if not _answered(ctx, "user_context"):
            raise InputRequired({"user_context": _elicit("What context should the prompt use?", "context")})
        context = (ctx.input_responses or {})["user_context"].get("content", {}).get("context", "")
        return [text_message(f"Answer with this context: {context}")]

    return [
        Prompt("test_simple_prompt", "Simple", "A prompt without arguments.", simple),
        Prompt("test_input_required_result_prompt", "Needs input", "Asks the user for context first.", needs_input),
        Prompt(
            "test_prompt_with_arguments",
            "With arguments",
            "A prompt with two arguments.",
            with_arguments,
            [
                PromptArgument("arg1", "First test argument", required=True),
                PromptArgument("arg2", "Second test argument", required=True),
            ],
            complete_arguments,
        ),
        Prompt(
            "test_prompt_with_embedded_resource",
            "Embedded resource",
            "A prompt embedding a resource.",
            embedded,
            [PromptArgument("resourceUri", "URI of the resource to embed", required=True)],
        ),
        Prompt("test_prompt_with_image", "Image", "A prompt with an image.", image),
    ]


async def _suite(*args: str, timeout: float = 120) -> str:
    env = {**os.environ, "PATH": f"{NODE_DIR}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(
        CONFORMANCE_BIN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    return _ANSI.sub("", output.decode(errors="replace"))


async def _run(url: str, scenario: str, spec_version: str | None) -> tuple[str, set[str]]:
    args = ["server", "--url", url, "--scenario", scenario]
    if FIXTURE_EXPECTED.get(scenario) == {"scenario-timeout"}:
        args += ["--timeout", "5000"]  # known to time out: do not wait the default 30 s
    if spec_version and spec_version != "extension":
        args += ["--spec-version", spec_version]
    text = await _suite(*args)
    summary = _SUMMARY.search(text)
    assert summary is not None, text[-3000:]  # the suite exits 0 even when checks fail: read its summary
    return summary.group(0), set(_FAILED_CHECK.findall(text))


async def test_scenario_list_is_the_suites() -> None:
    listed = {name: tuple(versions.split(",")) for name, versions in _LISTED.findall(await _suite("list", "--server"))}
    assert listed == SCENARIOS


@pytest.mark.parametrize(("scenario", "spec_version", "expected"), REAL_APP_CASES)
async def test_real_app(live_server: Any, scenario: str, spec_version: str | None, expected: set[str]) -> None:
    summary, failed = await _run(live_server.url + "/mcp", scenario, spec_version)
    assert failed == expected, f"{scenario} ({spec_version or 'default'}): {summary}"


FIXTURE_CASES = [
    (scenario, version)
    for scenario, versions in SCENARIOS.items()
    for version in versions
    if scenario not in EXTENSION_SCENARIOS
]


@pytest.mark.parametrize(("scenario", "spec_version"), FIXTURE_CASES)
async def test_fixture_server(mcp_test_app: Any, start_live_server: Any, scenario: str, spec_version: str) -> None:
    test_app = mcp_test_app(tools=_fixture_tools(), resources=FixtureResources(), prompts=_fixture_prompts())
    server = await start_live_server(test_app.app)
    summary, failed = await _run(server.url + "/mcp", scenario, spec_version)
    assert failed == FIXTURE_EXPECTED.get(scenario, set()), f"{scenario} ({spec_version}): {summary}"
