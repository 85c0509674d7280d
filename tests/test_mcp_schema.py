"""The tool-argument check (app.mcp.schema): the fast path never accepts what jsonschema rejects, declines
what it does not understand, and the message names what was wrong and where."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from app.mcp.schema import ArgumentSchema, fast_validator

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 5},
            "max_rows": {"type": "integer", "minimum": 1},
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 30},
            "flag": {"type": "boolean", "description": "x"},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"id": {"type": "string"}}},  # extra properties allowed
]
VALUES = [
    "",
    "a",
    "abcde",
    "abcdef",
    "é" * 5,
    0,
    1,
    -1,
    2**70,
    1.0,
    0.5,
    30,
    30.0,
    31,
    True,
    False,
    None,
    [],
    {},
    float("nan"),
]


def _instances() -> list[Any]:
    out: list[Any] = [None, [], "x", 1, {}]
    keys = ["query", "max_rows", "timeout_seconds", "flag", "id", "other"]
    for key, value in itertools.product(keys, VALUES):
        out.append({key: value})
        out.append({"query": "ok", key: value})
    return out


@pytest.mark.parametrize("schema", SCHEMAS)
def test_fast_validator_never_accepts_what_jsonschema_rejects(schema: dict[str, Any]) -> None:
    fast = fast_validator(schema)
    assert fast is not None
    reference = Draft202012Validator(schema)
    accepted = 0
    for instance in _instances():
        if fast(instance):
            accepted += 1
            assert reference.is_valid(instance), instance
    assert accepted > 10


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}}},
        {"type": "object", "properties": {"x": {"type": "string", "pattern": "^a"}}},
        {"type": "object", "anyOf": [{"required": ["a"]}]},
        {"type": "array"},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
    ],
)
def test_fast_validator_declines_what_it_does_not_understand(schema: dict[str, Any]) -> None:
    assert fast_validator(schema) is None


def test_argument_problem_names_the_tool_and_the_place() -> None:
    schema = ArgumentSchema("run", SCHEMAS[0])
    assert schema.problem({"query": "ok", "max_rows": 3}) is None
    problem = schema.problem({"query": "ok", "max_rows": 0})
    assert (
        problem is not None and problem.startswith("Invalid arguments for tool run:") and "(at 'max_rows')" in problem
    )
    assert ArgumentSchema("any", {"type": "object", "properties": {"k": {"enum": [1]}}}).problem({"k": 2}) is not None


def test_broken_schema_fails_at_start() -> None:
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's SchemaError
        ArgumentSchema("bad", {"type": "object", "properties": 5})
