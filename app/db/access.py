"""The access policy in force (ACCESS_POLICY_FILE) and the checks Database runs with it (issue 14).

`AccessControl` holds the loaded `AccessPolicy`: loaded once at start-up (a bad file raises PolicyError with
its one line, which stops start-up), replaced by `reload()` on SIGHUP (a bad new file keeps the old policy
and logs one warning). `describe()` is the summary the operator console shows.

The statement check itself is app.policy's; this module adds what only the database side knows:
- `write_refusal`: a write (which the read-only guard gives no tree for) is parsed here and refused, for a
  role whose policy restricts anything, when it touches a denied table or column, names `*` over a table
  that may have denied columns, or is a kind of statement whose reads cannot be followed (EXEC, a
  procedure call, anything sqlglot keeps as an unparsed command): fail closed;
- `internal_refusal`: a read without a caller (the service's own catalog queries) may read no table of the
  user catalog while a policy restricts anyone, so a caller's statement cannot sneak through that path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlglot
import structlog
from sqlglot import exp

from ..core import Principal
from ..policy import UNRESTRICTED, AccessPolicy, Catalog, PolicyError, RolePolicy, load_policy, tables_read

log = structlog.get_logger(__name__)

# Statements a restricted role's write may be: their tables and columns are all in the tree.
_FOLLOWABLE_WRITES: tuple[type[exp.Expr], ...] = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Select,
    exp.SetOperation,
)


class AccessControl:
    """The policy in force; `policy` is replaced whole on reload, so a reader never sees half a policy."""

    def __init__(self, path: str, *, max_rows: int, timeout_seconds: float) -> None:
        self.path = path.strip()
        self._max_rows, self._timeout = max_rows, timeout_seconds
        self.policy: AccessPolicy = self._load()  # PolicyError (one line) stops start-up
        self.generation = 0  # bumped by every successful reload (cached decisions name it)

    def _load(self) -> AccessPolicy:
        if not self.path:
            return UNRESTRICTED
        return load_policy(self.path, max_rows=self._max_rows, timeout_seconds=self._timeout)

    @property
    def configured(self) -> bool:
        return bool(self.path)

    def reload(self) -> bool:
        """Read the file again (SIGHUP). An invalid file keeps the policy in force and logs one warning."""
        try:
            policy = self._load()
        except PolicyError as exc:
            log.warning("policy.reload_failed", error=str(exc), kept=self.policy.source)
            return False
        self.policy = policy
        self.generation += 1
        log.info("policy.reloaded", source=policy.source, roles=sorted(policy.roles))
        return True

    @property
    def restricts_anyone(self) -> bool:
        return any(role.restricts for role in self.policy.roles.values())

    def role(self, principal: Principal) -> RolePolicy:
        return self.policy.role(principal.role)

    def restricting_role(self, principal: Principal | None) -> RolePolicy | None:
        """The caller's role policy when it restricts anything; None for a role that may read everything."""
        if principal is None:
            return None
        role = self.role(principal)
        return role if role.restricts else None

    def describe(self) -> dict[str, Any]:
        """What the console shows: the file, and per role what it may read and its caps."""
        return {
            "source": self.policy.source,
            "configured": self.configured,
            "roles": {
                name: {
                    "tables_allowed": [str(p) for p in role.allow_tables],
                    "tables_denied": [str(p) for p in role.deny_tables],
                    "columns_denied": [str(p) for p in role.deny_columns],
                    "max_rows": role.caps(self._max_rows, self._timeout).max_rows,
                    "timeout_seconds": role.caps(self._max_rows, self._timeout).timeout_seconds,
                    "restricts": role.restricts,
                }
                for name, role in sorted(self.policy.roles.items())
            },
        }


def internal_refusal(tree: exp.Expr | None, catalog: Catalog) -> str | None:
    """Why a read without a caller may not run while a policy restricts anyone, or None.

    The service's own catalog queries read system views (INFORMATION_SCHEMA, sys.*, pg_catalog,
    sqlite_master), never a user table: anything naming a table of the catalog needs a caller."""
    if tree is None:
        return "a read without a caller must have a checked statement while an access policy is in force"
    user_tables = {_key(t.schema, t.name) for t in catalog.tables()}
    for name in tables_read(tree, catalog):
        schema, _, table = name.rpartition(".")
        if _key(schema or None, table) in user_tables:
            return f"a read without a caller may not read table {name} while an access policy is in force"
    return None


def _key(schema: str | None, name: str) -> tuple[str, str]:
    return ((schema or "main").lower(), name.lower())


def write_tables(sql: str, glot: str) -> tuple[str, ...] | None:
    """The tables a write names, as written (for the audit line); None when it cannot be parsed."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=glot) if s is not None]
    except sqlglot.errors.SqlglotError:
        return None
    return tuple(dict.fromkeys(_table_name(t) for s in statements for t in s.find_all(exp.Table) if t.name))


def _table_name(table: exp.Table) -> str:
    return f"{table.db}.{table.name}" if table.db else table.name


def write_refusal(sql: str, glot: str, role: RolePolicy, catalog: Catalog) -> str | None:
    """Why a restricted role's write may not run (naming what it touched), or None when it may."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=glot) if s is not None]
    except sqlglot.errors.SqlglotError:
        return f"role {role.name} has an access policy, and a write it cannot follow is refused"
    if not statements:
        return "empty statement"
    for statement in statements:
        if not isinstance(statement, _FOLLOWABLE_WRITES) or any(statement.find_all(exp.Command)):
            kind = statement.key.upper()
            return (
                f"role {role.name} has an access policy, and a {kind} statement could read anything: "
                "only INSERT, UPDATE, DELETE, MERGE and DDL naming their tables are allowed"
            )
        ctes = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
        touched = []
        for table in statement.find_all(exp.Table):
            if not table.name or (not table.db and table.name.lower() in ctes):
                continue
            resolved = list(catalog.resolve(table.db or None, table.name)) or []
            schema = resolved[0].schema if resolved else (table.db or catalog.default_schema)
            name = resolved[0].name if resolved else table.name
            denial = role.table_denial(schema, name)
            if denial:
                return f"role {role.name} may not touch {_qualified(schema, name)} ({denial})"
            touched.append((schema, name))
        refusal = _column_refusal(statement, touched, role)
        if refusal:
            return refusal
    return None


def _qualified(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _column_refusal(statement: exp.Expr, touched: Iterable[tuple[str | None, str]], role: RolePolicy) -> str | None:
    """A write naming a denied column of a table it touches, or `*` / an INSERT without a column list over a
    table whose columns may be denied (the write's column names are matched against every touched table)."""
    tables = list(touched)
    guarded = [t for t in tables if role.may_deny_columns_of(*t)]
    if not guarded:
        return None
    for column in statement.find_all(exp.Column):
        for schema, name in guarded:
            if column.name and role.column_denied(schema, name, column.name):
                return f"role {role.name} may not touch column {_qualified(schema, name)}.{column.name}"
    for identifier in _insert_columns(statement):
        for schema, name in guarded:
            if role.column_denied(schema, name, identifier):
                return f"role {role.name} may not touch column {_qualified(schema, name)}.{identifier}"
    if any(statement.find_all(exp.Star)) or _insert_without_columns(statement):
        shown = ", ".join(_qualified(*t) for t in guarded)
        return f"role {role.name} may not see every column of {shown}: name the columns the write uses"
    return None


def _insert_columns(statement: exp.Expr) -> list[str]:
    names: list[str] = []
    for insert in statement.find_all(exp.Insert):
        target = insert.this
        if isinstance(target, exp.Schema):
            names.extend(i.name for i in target.expressions if isinstance(i, exp.Identifier))
    return names


def _insert_without_columns(statement: exp.Expr) -> bool:
    return any(not isinstance(insert.this, exp.Schema) for insert in statement.find_all(exp.Insert))
