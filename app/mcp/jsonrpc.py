"""JSON-RPC 2.0 framing for MCP: parsing, validation, error codes and encoding. No I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import orjson

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# MCP 2026-07-28 codes (the -32020..-32099 band is reserved for the specification).
HEADER_MISMATCH = -32020
MISSING_REQUIRED_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022
# Answer to a request the client itself cancelled when HTTP still needs a body. Outside the
# JSON-RPC reserved range on purpose (application-defined, the value LSP uses for the same thing).
REQUEST_CANCELLED = -32800

# HTTP status for an error code on the 2026-07-28 envelope (streamable-http "Server Validation",
# "Protocol Version Header"); other codes travel with 200.
MODERN_HTTP_STATUS: dict[int, int] = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_REQUIRED_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}

RequestId = int | str


class JsonRpcError(Exception):
    """A protocol failure answered with a JSON-RPC error object (message is safe to show)."""

    def __init__(self, code: int, message: str, data: Any = None, *, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id  # set when the failing message's id could still be read

    def error_object(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


@dataclass(slots=True)
class Message:
    """One validated JSON-RPC message from the client."""

    kind: Literal["request", "notification", "response"]
    method: str
    params: dict[str, Any]
    id: RequestId | None = None


# Every byte that is not a digit maps to a space: a run of 19 digits then shows as "0" * 19.
_DIGITS_ONLY = bytes(byte if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256)).replace(b"123456789", b"0" * 9)
_LONG_DIGIT_RUN = b"0" * 19


def loads(body: bytes | str) -> Any:
    """Decode a body exactly as the standard library does, with orjson's speed where the two agree.

    orjson reads integers past 64 bits as floats (an id or a SQL parameter would change), so a body with a
    run of 19+ digits (which any such integer is) goes to the standard library; so does anything orjson
    refuses (NaN, Infinity, lone surrogates, a BOM, UTF-16), which then decodes or fails as it always did.
    """
    if isinstance(body, bytes) and _LONG_DIGIT_RUN not in body.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, huge int literals, absurd nesting
        raise JsonRpcError(PARSE_ERROR, "Parse error: the body is not valid JSON") from None


def _valid_id(value: Any) -> bool:
    # bool is an int subclass; JSON-RPC ids are strings or integers (MCP: never null).
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def parse_message(obj: Any) -> Message:
    """Validate one decoded JSON-RPC object; raise JsonRpcError(INVALID_REQUEST/INVALID_PARAMS)."""
    if not isinstance(obj, dict):
        raise JsonRpcError(INVALID_REQUEST, "Invalid request: expected a JSON-RPC object")
    raw_id = obj.get("id")
    request_id = raw_id if _valid_id(raw_id) else None
    if obj.get("jsonrpc") != "2.0":
        raise JsonRpcError(INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"', request_id=request_id)
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise JsonRpcError(
                INVALID_REQUEST, 'Invalid request: "method" must be a non-empty string', request_id=request_id
            )
        if "id" in obj and request_id is None:
            raise JsonRpcError(INVALID_REQUEST, 'Invalid request: "id" must be a string or an integer')
        params = obj.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise JsonRpcError(INVALID_PARAMS, 'Invalid params: "params" must be an object', request_id=request_id)
        if "id" in obj:
            return Message("request", method, params, request_id)
        return Message("notification", method, params)
    if ("result" in obj or "error" in obj) and "id" in obj:
        # A reply to a server->client request (sampling, elicitation, roots): its result or error
        # travels in `params` for McpServer.handle_response.
        reply = {"error": obj["error"]} if "error" in obj else {"result": obj["result"]}
        return Message("response", "", reply, request_id)
    raise JsonRpcError(
        INVALID_REQUEST,
        'Invalid request: a message needs "method" (or "result"/"error" and "id")',
        request_id=request_id,
    )


def result_message(request_id: RequestId | None, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_message(request_id: RequestId | None, error: JsonRpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.error_object()}


class RawJson:
    """A pre-serialized JSON value spliced into a message unchanged (e.g. the cached tools/list).

    Made from text or from UTF-8 bytes; each form is produced once, when first asked for.
    """

    __slots__ = ("_data", "_text")

    def __init__(self, value: str | bytes) -> None:
        self._text: str | None = value if isinstance(value, str) else None
        self._data: bytes | None = value if isinstance(value, bytes) else None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self._data.decode() if self._data is not None else ""
        return self._text

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.text.encode()
        return self._data


def _default(value: Any) -> Any:
    # Tools return JSON-ready dicts; anything else is stringified rather than failing the whole response.
    return str(value)


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_default)
# orjson writes the same compact UTF-8 text several times faster. Dates and dataclasses go to `_default`
# (str) as they did with the standard encoder; what orjson cannot write (ints past 64 bits, nesting past
# 255, non-string keys, lone surrogates) falls back to the standard encoder, so the output is unchanged,
# except in floats: below 1e-4 the same number may be spelled differently (`1e-7` for `1e-07`), and a
# NaN/Infinity (which rows never carry: app.db.serialize makes them strings) is written as null, valid
# JSON, where the standard encoder wrote the invalid `NaN`.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _encode(value: Any) -> str:
    try:
        return orjson.dumps(value, default=_default, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return _encoder.encode(value)


def dumps(message: Any) -> str:
    """Serialize a message (or a batch of them); a RawJson result is spliced in without re-encoding."""
    if isinstance(message, list):
        return "[" + ",".join(dumps(item) for item in message) + "]"
    if isinstance(message, dict) and isinstance(message.get("result"), RawJson):
        head = _encode({"jsonrpc": "2.0", "id": message["id"]})
        return f'{head[:-1]},"result":{message["result"].text}}}'
    return _encode(message)


def dumps_value(value: Any) -> str:
    return _encode(value)


def encode_value(value: Any) -> bytes | None:
    """orjson's UTF-8 bytes for `value`, None where orjson cannot write it (dumps_value's fallback then)."""
    try:
        return orjson.dumps(value, default=_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return None


def dumps_bytes(message: Any) -> bytes:
    """dumps(message).encode(), without the round trip through str for the usual single answer."""
    if isinstance(message, dict) and isinstance(message.get("result"), RawJson):
        head = encode_value({"jsonrpc": "2.0", "id": message["id"]})
        if head is not None:
            return head[:-1] + b',"result":' + message["result"].data + b"}"
    return dumps(message).encode()
