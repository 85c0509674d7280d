"""Read the access-policy file (ACCESS_POLICY_FILE, YAML) into an AccessPolicy, or fail with one line.

Every error names the file and the entry, e.g.
`policy.yaml: roles.reader.tables.deny[1]: "hr..x" has an empty part; write table, schema.table, schema.* or *`,
so an operator can fix the file from the start-up log alone. The file is read with yaml.safe_load (no
Python objects), and a key given twice in one mapping is an error instead of silently keeping the last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .model import AccessPolicy, ColumnPattern, NamePart, RolePolicy, TablePattern

ROLE_KEYS = ("tables", "columns", "max_rows", "timeout_seconds")
TABLE_KEYS = ("allow", "deny")
COLUMN_KEYS = ("deny",)
_ROLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_FORBIDDEN_IN_NAMES = set('"[]`?')
TABLE_FORMS = "table, schema.table, schema.* or *"
COLUMN_FORMS = "[schema.]table.column, with * wildcards"


class PolicyError(ValueError):
    """The policy file is unreadable or invalid; the message is one line naming the bad entry."""


Fail = Callable[[str, str], PolicyError]  # (where, what) -> the error to raise


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise PolicyError(f"line {line}: {key!r} is given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_policy(path: str | Path, *, max_rows: int | None = None, timeout_seconds: float | None = None) -> AccessPolicy:
    """The policy in `path`. `max_rows` / `timeout_seconds` are the global caps a role's may not exceed."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{shown}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{shown}: cannot be read ({type(exc).__name__})") from None
    return parse_policy_text(text, source=shown, max_rows=max_rows, timeout_seconds=timeout_seconds)


def parse_policy_text(
    text: str, *, source: str = "policy", max_rows: int | None = None, timeout_seconds: float | None = None
) -> AccessPolicy:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no Python objects
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    return parse_policy(data, source=source, max_rows=max_rows, timeout_seconds=timeout_seconds)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def parse_policy(
    data: object, *, source: str = "policy", max_rows: int | None = None, timeout_seconds: float | None = None
) -> AccessPolicy:
    """The policy in already-loaded YAML data (a mapping with `roles`)."""

    def fail(where: str, what: str) -> PolicyError:
        return PolicyError(f"{source}: {where}: {what}")

    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the file must be a mapping with a `roles` key, not {_kind(data)}")
    _only_keys(data, ("roles",), "the top level", fail)
    roles_data = data.get("roles")
    if not isinstance(roles_data, dict) or not roles_data:
        raise fail("roles", "must be a mapping of role names to their policy")
    roles: dict[str, RolePolicy] = {}
    for name, entry in roles_data.items():
        if not isinstance(name, str) or not _ROLE_NAME.match(name):
            raise fail(f"roles.{name}", "a role name is letters, digits, _ . or - (at most 64)")
        if name.lower() in roles:
            raise fail(f"roles.{name}", "is given twice (role names are case-insensitive)")
        roles[name.lower()] = _role(name, entry, f"roles.{name}", fail, max_rows, timeout_seconds)
    return AccessPolicy(roles=roles, source=source)


def _role(name: str, entry: object, where: str, fail: Fail, max_rows: int | None, timeout: float | None) -> RolePolicy:
    if entry is None:  # `reader:` with nothing under it: the defaults
        return RolePolicy(name)
    if not isinstance(entry, dict):
        raise fail(where, f"must be a mapping with {', '.join(ROLE_KEYS)}, not {_kind(entry)}")
    _only_keys(entry, ROLE_KEYS, where, fail)
    tables = entry.get("tables")
    allow: tuple[TablePattern, ...] = RolePolicy(name).allow_tables
    deny: tuple[TablePattern, ...] = ()
    if tables is not None:
        if not isinstance(tables, dict):
            raise fail(f"{where}.tables", f"must be a mapping with allow and/or deny, not {_kind(tables)}")
        _only_keys(tables, TABLE_KEYS, f"{where}.tables", fail)
        if "allow" in tables:
            allowed = _patterns(tables["allow"], f"{where}.tables.allow", fail)
            allow = tuple(_table_pattern(p, w, fail) for p, w in allowed)
        if "deny" in tables:
            denied = _patterns(tables["deny"], f"{where}.tables.deny", fail)
            deny = tuple(_table_pattern(p, w, fail) for p, w in denied)
    columns = entry.get("columns")
    deny_columns: tuple[ColumnPattern, ...] = ()
    if columns is not None:
        if not isinstance(columns, dict):
            raise fail(f"{where}.columns", f"must be a mapping with deny, not {_kind(columns)}")
        _only_keys(columns, COLUMN_KEYS, f"{where}.columns", fail)
        if "deny" in columns:
            deny_columns = tuple(
                _column_pattern(p, w, fail) for p, w in _patterns(columns["deny"], f"{where}.columns.deny", fail)
            )
    rows = _cap(entry.get("max_rows"), f"{where}.max_rows", fail, integer=True, ceiling=max_rows, name="MAX_ROWS")
    seconds = _cap(
        entry.get("timeout_seconds"),
        f"{where}.timeout_seconds",
        fail,
        integer=False,
        ceiling=timeout,
        name="QUERY_TIMEOUT_SECONDS",
    )
    return RolePolicy(
        name=name,
        allow_tables=allow,
        deny_tables=deny,
        deny_columns=deny_columns,
        max_rows=None if rows is None else int(rows),
        timeout_seconds=seconds,
    )


def _only_keys(mapping: dict[Any, Any], allowed: tuple[str, ...], where: str, fail: Fail) -> None:
    for key in mapping:
        if key not in allowed:
            place = f"{where}.{key}" if where != "the top level" else str(key)
            raise fail(place, f"unknown key; {where} takes {', '.join(allowed)}")


def _patterns(value: object, where: str, fail: Fail) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise fail(where, f'must be a list of patterns (["..."]), not {_kind(value)}')
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise fail(f"{where}[{index}]", f"must be a text pattern, not {_kind(item)}")
        out.append((item, f"{where}[{index}]"))
    return out


def _parts(text: str, where: str, fail: Fail, forms: str) -> list[NamePart]:
    stripped = text.strip()
    if not stripped:
        raise fail(where, f"is empty; write {forms}")
    bad = sorted(_FORBIDDEN_IN_NAMES.intersection(stripped))
    if bad:
        raise fail(where, f'"{text}" contains {"".join(bad)}; write names without quotes or brackets')
    parts = [p.strip() for p in stripped.split(".")]
    if any(not p for p in parts):
        raise fail(where, f'"{text}" has an empty part; write {forms}')
    return [NamePart(p) for p in parts]


def _table_pattern(text: str, where: str, fail: Fail) -> TablePattern:
    parts = _parts(text, where, fail, TABLE_FORMS)
    if len(parts) == 1:
        return TablePattern(None, parts[0])
    if len(parts) == 2:
        return TablePattern(parts[0], parts[1])
    raise fail(where, f'"{text}" has {len(parts)} parts; a table pattern is {TABLE_FORMS}')


def _column_pattern(text: str, where: str, fail: Fail) -> ColumnPattern:
    parts = _parts(text, where, fail, COLUMN_FORMS)
    if len(parts) == 1:
        raise fail(where, f'"{text}" names no table; write table.column or *.{text.strip()} for every table')
    if len(parts) == 2:
        return ColumnPattern(None, parts[0], parts[1])
    if len(parts) == 3:
        return ColumnPattern(parts[0], parts[1], parts[2])
    raise fail(where, f'"{text}" has {len(parts)} parts; a column pattern is {COLUMN_FORMS}')


def _cap(value: object, where: str, fail: Fail, *, integer: bool, ceiling: float | None, name: str) -> float | None:
    if value is None:
        return None
    number_ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not number_ok:
        kind = "a whole number" if integer else "a number of seconds"
        raise fail(where, f"must be {kind}, not {_kind(value)}")
    assert isinstance(value, int | float)  # narrowed above; mypy cannot see through `number_ok`
    if not math.isfinite(value) or value <= 0:
        raise fail(where, f"must be above 0, not {value}")
    if ceiling is not None and value > ceiling:
        raise fail(where, f"{value} is above the global {name} ({ceiling}); a role's cap can only be lower")
    return float(value) if not integer else value


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f'"{value}" (text)'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r}"
