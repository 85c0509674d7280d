"""Tool argument validation: jsonschema is the judge, with a fast path for the simple schemas tools use.

`ArgumentSchema` compiles one tool's input schema once (a broken schema fails at start-up) and answers
"what is wrong with these arguments" as the message the client sees, or None when they are valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

_FAST_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})
_FAST_PROPERTY_KEYS = _FAST_ANNOTATIONS | {
    "type",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
}
_FAST_ROOT_KEYS = _FAST_ANNOTATIONS | {"type", "properties", "required", "additionalProperties", "$schema"}


def _fast_property(schema: Any) -> Callable[[Any], bool] | None:
    if not isinstance(schema, dict) or set(schema) - _FAST_PROPERTY_KEYS:
        return None
    kind = schema.get("type")
    bounds = [
        (key, schema[key]) for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if key in schema
    ]
    if any(not isinstance(v, int | float) or isinstance(v, bool) for _, v in bounds):
        return None
    if kind == "string" and not bounds:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if not isinstance(low, int) or (high is not None and not isinstance(high, int)):
            return None
        return lambda v: type(v) is str and len(v) >= low and (high is None or len(v) <= high)
    if kind in ("integer", "number") and "minLength" not in schema and "maxLength" not in schema:
        types = (int,) if kind == "integer" else (int, float)

        def check_number(v: Any) -> bool:
            if type(v) not in types:
                return False  # bool, integral floats and the rest: let jsonschema decide
            for key, bound in bounds:
                if (
                    (key == "minimum" and v < bound)
                    or (key == "maximum" and v > bound)
                    or (key == "exclusiveMinimum" and v <= bound)
                    or (key == "exclusiveMaximum" and v >= bound)
                ):
                    return False
            return True

        return check_number
    if kind == "boolean" and len(schema.keys() - _FAST_ANNOTATIONS) == 1:
        return lambda v: type(v) is bool
    return None


def fast_validator(schema: Any) -> Callable[[Any], bool] | None:
    """A quick check for the simple object schemas tools use (primitive properties, required,
    additionalProperties). True means valid for certain; False means "ask jsonschema", which stays the
    judge (and writes the message). None when the schema uses anything else."""
    if not isinstance(schema, dict) or set(schema) - _FAST_ROOT_KEYS or schema.get("type") != "object":
        return None
    if (
        schema.get("$schema", "https://json-schema.org/draft/2020-12/schema")
        != "https://json-schema.org/draft/2020-12/schema"
    ):
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    additional = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list) or not isinstance(additional, bool):
        return None
    checks = {name: _fast_property(sub) for name, sub in properties.items()}
    if any(check is None for check in checks.values()):
        return None
    required_names = tuple(required)

    def check(arguments: Any) -> bool:
        if type(arguments) is not dict:
            return False
        for name in required_names:
            if name not in arguments:
                return False
        for name, value in arguments.items():
            prop = checks.get(name)
            if prop is None:
                if not additional:
                    return False
            elif not prop(value):
                return False
        return True

    return check


class ArgumentSchema:
    """One tool's compiled input schema: the jsonschema validator and, when the schema allows, the fast check."""

    __slots__ = ("_fast", "_validator", "tool_name")

    def __init__(self, tool_name: str, schema: dict[str, Any]) -> None:
        cls = validator_for(schema, default=Draft202012Validator)
        cls.check_schema(schema)  # a broken schema is a programming error: fail at start-up
        self.tool_name = tool_name
        self._validator: Validator = cls(schema)
        self._fast = fast_validator(schema)

    def problem(self, arguments: Any) -> str | None:
        """The message for invalid `arguments` (what was wrong and where), None when they are valid."""
        # jsonschema costs tens of microseconds per call; the fast path keeps the common case cheap.
        if (self._fast is not None and self._fast(arguments)) or self._validator.is_valid(arguments):
            return None
        error = best_match(self._validator.iter_errors(arguments))
        if error is None:  # pragma: no cover - is_valid said otherwise
            return f"Invalid arguments for tool {self.tool_name}."
        where = "/".join(str(part) for part in error.absolute_path)
        at = f" (at '{where}')" if where else ""
        return f"Invalid arguments for tool {self.tool_name}: {error.message}{at}."
