"""Check a parsed statement against a role's policy: every table and column it touches is resolved.

Input is the tree the read-only guard already parsed and checked (`guard.Verdict.tree`), so nothing is
parsed twice and nothing is matched as text. sqlglot's scope analysis says, for each SELECT, what its
sources are (tables, derived tables, CTEs, laterals) and which columns it names; this module resolves
each column against those sources and the catalog:

- every table node that is not a CTE reference is a table read, checked by its catalog name (a table the
  catalog does not know is checked by the name as written, unqualified meaning the default schema);
- a qualified column (`e.salary`, `dbo.Employees.Salary`) belongs to the source of that alias; an
  unqualified one could belong to any source that has such a column, in this SELECT or (for correlated
  subqueries) an enclosing one, and is refused if *any* candidate is denied (fail closed);
- `SELECT *`, `t.*` (also inside functions, `count(t.*)`) and PostgreSQL whole-row references
  (`row_to_json(t)`) read every column of their table: refused when any of them is denied, naming the
  columns to leave out; so are NATURAL joins and USING lists that compare a denied column;
- columns of derived tables and CTEs are checked where those are defined, so an alias cannot launder one.

Views are checked by their own name (deny the view too if it shows denied data): a view's definition is
not expanded. Anything the analysis cannot follow is refused, never let through.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, ScopeType, traverse_scope, walk_in_scope

from .model import RolePolicy

MAX_NAMED = 5  # denied names listed in one message


@dataclass(frozen=True, slots=True)
class CatalogTable:
    """A table or view as the policy sees it; `columns` None when the catalog does not know them."""

    schema: str | None
    name: str
    columns: tuple[str, ...] | None = ()
    kind: str = "table"

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def has_column(self, column: str) -> bool:
        return self.columns is not None and column.lower() in (c.lower() for c in self.columns)

    def column_name(self, column: str) -> str:
        """The column as the catalog spells it."""
        for known in self.columns or ():
            if known.lower() == column.lower():
                return known
        return column


class Catalog(Protocol):
    """What the check needs from the catalog: no database access, so it can be built once and cached."""

    @property
    def default_schema(self) -> str | None:
        """Where an unqualified name not in the catalog is assumed to live (dbo, public; None for SQLite)."""
        ...

    def tables(self) -> Sequence[CatalogTable]: ...

    def resolve(self, schema: str | None, name: str) -> Sequence[CatalogTable]:
        """The tables a written name can mean: one, several when an unqualified name is ambiguous, or none."""
        ...


class InMemoryCatalog:
    """A Catalog over a list of tables; names resolve case-insensitively, like the catalog tools."""

    def __init__(self, tables: Iterable[CatalogTable], default_schema: str | None = None) -> None:
        self._tables = tuple(tables)
        self._default_schema = default_schema
        self._by_name: dict[str, list[CatalogTable]] = {}
        for table in self._tables:
            self._by_name.setdefault(table.name.lower(), []).append(table)

    @property
    def default_schema(self) -> str | None:
        return self._default_schema

    def tables(self) -> Sequence[CatalogTable]:
        return self._tables

    def resolve(self, schema: str | None, name: str) -> Sequence[CatalogTable]:
        candidates = self._by_name.get(name.lower(), [])
        if schema is not None:
            wanted = schema.lower()
            return [t for t in candidates if (t.schema or "main").lower() == wanted]
        if len(candidates) > 1 and self._default_schema is not None:
            preferred = [t for t in candidates if (t.schema or "").lower() == self._default_schema.lower()]
            if preferred:
                return preferred
        return list(candidates)


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one statement. `tables` are the qualified names it reads (for the audit)."""

    allowed: bool
    message: str | None = None
    denied_tables: tuple[str, ...] = ()
    denied_columns: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()


@dataclass(slots=True)
class _Source:
    """A base table read by a statement: the catalog tables it may be (several if ambiguous)."""

    # Not in the catalog: one CatalogTable with the name as written and columns None (unknown).
    candidates: tuple[CatalogTable, ...]
    # PostgreSQL's `employees AS e(a, b, c)` renames columns by position: lower-case new name -> position.
    renamed: dict[str, int] = field(default_factory=dict)

    def meanings(self, table: CatalogTable, name: str) -> list[str] | None:
        """The columns of `table` a column written `name` may be; None when it could be any of them."""
        position = self.renamed.get(name.lower())
        if position is None:
            return [name]
        if table.columns is None or len(self.candidates) > 1 or position >= len(table.columns):
            return None
        return [table.columns[position], name]

    def may_have(self, table: CatalogTable, name: str) -> bool:
        return name.lower() in self.renamed or table.has_column(name)


@dataclass(slots=True)
class _Findings:
    role: RolePolicy
    denied_tables: dict[str, str] = field(default_factory=dict)  # qualified name -> why
    denied_columns: dict[str, None] = field(default_factory=dict)  # ordered set of schema.table.column
    star_hints: dict[str, list[str]] = field(default_factory=dict)  # table -> columns to leave out
    other: list[str] = field(default_factory=list)  # other refusal sentences
    tables: dict[str, None] = field(default_factory=dict)

    def deny_column(self, table: CatalogTable, column: str) -> None:
        self.denied_columns[f"{table.qualified_name}.{table.column_name(column)}"] = None


class _Unfollowable(Exception):
    """The statement has a shape the check cannot resolve: refuse it."""


def check_statement(tree: exp.Expr | None, catalog: Catalog, role: RolePolicy) -> Decision:
    """Whether `role` may run the parsed statement `tree`; a refusal names what was denied. Never raises.

    `tree` is the guard's `Verdict.tree`; None (a T-SQL statement the guard checked only after rewriting
    it) cannot be checked, so it passes only for a role the policy does not restrict."""
    if tree is None:
        if not role.restricts:
            return Decision(True)
        return _refused(
            role,
            "this statement can only be checked after a rewrite (OPTION (USE HINT ...), WITH XMLNAMESPACES, ...), "
            "so its tables and columns cannot be resolved; write it without that clause.",
        )
    findings = _Findings(role)
    try:
        _check(tree, catalog, findings)
    except RecursionError:
        return _refused(role, "the statement is nested too deeply to be checked against the access policy.")
    except _Unfollowable as exc:
        return _refused(role, f"{exc} so it cannot be checked against the access policy.")
    except Exception as exc:  # a bug here must refuse, never run the statement
        logging.getLogger(__name__).warning("policy check failed: %s", type(exc).__name__)
        return _refused(role, "the statement could not be checked against the access policy.")
    return _decision(findings)


def tables_read(tree: exp.Expr | None, catalog: Catalog) -> tuple[str, ...]:
    """The qualified names of the tables a statement reads (CTE names excluded), for the audit line."""
    return check_statement(tree, catalog, RolePolicy("audit")).tables


def _refused(role: RolePolicy, sentence: str) -> Decision:
    return Decision(False, f"Refused by the access policy for role {role.name}: {sentence}")


def _decision(findings: _Findings) -> Decision:
    sentences: list[str] = []
    role = findings.role.name
    if findings.denied_tables:
        named = list(findings.denied_tables.items())
        listed = ", ".join(f"{name} ({why})" for name, why in named[:MAX_NAMED])
        more = f" and {len(named) - MAX_NAMED} more" if len(named) > MAX_NAMED else ""
        noun = "table" if len(named) == 1 else "tables"
        sentences.append(f"role {role} may not read the {noun} {listed}{more}.")
    for table, columns in findings.star_hints.items():
        sentences.append(
            f"* over {table} includes columns role {role} may not see; list the columns you need "
            f"and leave out {', '.join(columns)}."
        )
    star_columns = {f"{t}.{c}" for t, cs in findings.star_hints.items() for c in cs}
    plain = [c for c in findings.denied_columns if c not in star_columns]
    if plain:
        noun = "column" if len(plain) == 1 else "columns"
        more = f" and {len(plain) - MAX_NAMED} more" if len(plain) > MAX_NAMED else ""
        sentences.append(f"role {role} may not see the {noun} {', '.join(plain[:MAX_NAMED])}{more}.")
    sentences.extend(findings.other)
    tables = tuple(findings.tables)
    if not sentences:
        return Decision(True, tables=tables)
    return Decision(
        False,
        "Refused by the access policy: " + " ".join(sentences),
        denied_tables=tuple(findings.denied_tables),
        denied_columns=tuple(findings.denied_columns),
        tables=tables,
    )


# --- tables -------------------------------------------------------------------------------------------


def _cte_binding(table: exp.Table) -> str:
    """What an unqualified table name means: "cte", "table", or "maybe" (a CTE's body naming itself or a
    later CTE without RECURSIVE: PostgreSQL reads the real table then, SQL Server and SQLite recurse)."""
    if table.args.get("db") or table.args.get("catalog"):
        return "table"
    name = table.name.lower()
    child: exp.Expr = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):  # inside a CTE body: earlier CTEs are visible, itself only if recursive
            ctes = list(node.expressions)
            position = next((i for i, cte in enumerate(ctes) if cte is child), len(ctes))
            if any(cte.alias_or_name.lower() == name for cte in ctes[:position]):
                return "cte"
            if any(cte.alias_or_name.lower() == name for cte in ctes[position:]):
                return "cte" if node.args.get("recursive") else "maybe"
        else:
            with_ = node.args.get("with_") or node.args.get("with")  # sqlglot 30 renamed the key
            if isinstance(with_, exp.With) and with_ is not child and _defines(with_, name):
                return "cte"
        child, node = node, node.parent
    return "table"


def _defines(with_: exp.With, name: str) -> bool:
    return any(cte.alias_or_name.lower() == name for cte in with_.expressions)


def _is_cte_reference(table: exp.Table, catalog: Catalog) -> bool:
    """Whether a table node names a CTE (which shadows any table) rather than a table; fail closed: a
    reference that may be either is a table when the catalog has one by that name."""
    binding = _cte_binding(table)
    if binding == "maybe":
        return not catalog.resolve(table.db or None, table.name)
    return binding == "cte"


def _is_function_source(table: exp.Table) -> bool:
    """A table-valued function (generate_series, OPENJSON, pragma_table_info): its arguments are columns."""
    return not isinstance(table.this, exp.Identifier)


def _resolve_table(table: exp.Table, catalog: Catalog, cache: dict[int, _Source]) -> _Source:
    cached = cache.get(id(table))
    if cached is not None:
        return cached
    schema = table.db or None
    found = tuple(catalog.resolve(schema, table.name))
    if found:
        source = _Source(found)
    else:  # not in the catalog: a system view, or a table created since; judged by the written name
        assumed = CatalogTable(schema or catalog.default_schema, table.name, columns=None)
        source = _Source((assumed,))
    alias = table.args.get("alias")
    if isinstance(alias, exp.TableAlias):
        for position, column in enumerate(alias.columns):
            source.renamed[column.name.lower()] = position
    cache[id(table)] = source
    return source


def _check_tables(tree: exp.Expr, catalog: Catalog, findings: _Findings, cache: dict[int, _Source]) -> None:
    for table in tree.find_all(exp.Table):
        if _is_function_source(table) or _is_cte_reference(table, catalog):
            continue
        if not table.name:
            raise _Unfollowable("a table reference has no name,")
        source = _resolve_table(table, catalog, cache)
        for candidate in source.candidates:
            findings.tables[candidate.qualified_name] = None
            why = findings.role.table_denial(candidate.schema, candidate.name)
            if why is not None:
                findings.denied_tables.setdefault(candidate.qualified_name, why)


# --- columns ------------------------------------------------------------------------------------------


def _check(tree: exp.Expr, catalog: Catalog, findings: _Findings) -> None:
    cache: dict[int, _Source] = {}
    _check_tables(tree, catalog, findings, cache)
    if not findings.role.deny_columns:
        return  # tables alone decide; no need to resolve columns
    scopes = [scope for root in _query_roots(tree) for scope in traverse_scope(root)]
    seen: set[int] = set()
    for scope in scopes:
        _check_scope(scope, catalog, findings, cache, seen)
    # Fail closed: a column in a place the scope analysis did not cover is checked against every table.
    leftovers = [c for c in tree.find_all(exp.Column) if id(c) not in seen]
    if leftovers:
        every = [
            _resolve_table(t, catalog, cache)
            for t in tree.find_all(exp.Table)
            if not _is_function_source(t) and not _is_cte_reference(t, catalog)
        ]
        for column in leftovers:
            if isinstance(column.this, exp.Star):
                for source in every:
                    _check_star(source, findings)
            else:
                _check_candidates(column.name, every, findings, ambiguous=True)


def _query_roots(tree: exp.Expr) -> list[exp.Expr]:
    """The queries scope analysis starts from: the statement, or the outermost queries inside a VALUES."""
    if isinstance(tree, exp.Query):
        return [tree]
    return [q for q in tree.find_all(exp.Query) if q.find_ancestor(exp.Query) is None]


def _sources(scope: Scope, catalog: Catalog, cache: dict[int, _Source]) -> dict[str, _Source | Scope | None]:
    """This scope's sources by lower-case alias: a base table, a derived scope, or None (a function)."""
    out: dict[str, _Source | Scope | None] = {}
    for alias, source in scope.sources.items():
        key = alias.lower()
        if isinstance(source, Scope):
            out[key] = source
        elif isinstance(source, exp.Table):
            out[key] = None if _is_function_source(source) else _resolve_table(source, catalog, cache)
        else:
            out[key] = None
    return out


def _outer_scopes(scope: Scope) -> Iterator[Scope]:
    """The enclosing scopes whose sources a column here may refer to (correlated subqueries, laterals).

    A derived table or CTE cannot see the sources of the SELECT it sits in, only what that SELECT can see
    from outside; a subquery, lateral or set-operation branch sees its parent's sources too."""
    current = scope
    while current.parent is not None:
        parent = current.parent
        if current.scope_type in (ScopeType.DERIVED_TABLE, ScopeType.CTE):
            current = parent  # skip the parent's own sources, keep climbing for its outer ones
            continue
        yield parent
        current = parent


def _check_scope(
    scope: Scope, catalog: Catalog, findings: _Findings, cache: dict[int, _Source], seen: set[int]
) -> None:
    levels = [_sources(scope, catalog, cache)] + [_sources(s, catalog, cache) for s in _outer_scopes(scope)]
    own = levels[0]
    select_aliases = _select_aliases(scope.expression)
    # EXISTS (SELECT * ...) only asks whether a row exists: its select list is never read.
    exists = isinstance(scope.expression.parent, exp.Exists)
    for node in walk_in_scope(scope.expression):
        if isinstance(node, exp.Join):
            _check_join(node, scope, own, findings)
        if isinstance(node, exp.Star) and _is_select_item(node, scope.expression) and not exists:
            for source in own.values():
                if isinstance(source, _Source):
                    _check_star(source, findings)
        if not isinstance(node, exp.Column):
            continue
        seen.add(id(node))
        if isinstance(node.this, exp.Star):
            _check_qualified_star(node, levels, findings)
        elif node.table:
            _check_qualified(node, levels, findings)
        elif node.name.lower() in select_aliases and _is_order_key(node):
            continue  # ORDER BY a select alias: its expression is checked in the select list
        else:
            _check_unqualified(node, levels, findings)


def _is_order_key(column: exp.Column) -> bool:
    """`ORDER BY alias` names the output column; inside an expression (`alias + 0`) PostgreSQL reads the
    table's column of that name instead, so only the bare key counts as the alias."""
    ordered = column.parent
    return isinstance(ordered, exp.Ordered) and ordered.this is column and isinstance(ordered.parent, exp.Order)


def _select_aliases(expression: exp.Expr) -> set[str]:
    if not isinstance(expression, exp.Select):
        return set()
    return {s.alias.lower() for s in expression.selects if isinstance(s, exp.Alias) and s.alias}


def _is_select_item(star: exp.Star, expression: exp.Expr) -> bool:
    return isinstance(expression, exp.Select) and any(s is star for s in expression.selects)


def _lookup(alias: str, levels: list[dict[str, _Source | Scope | None]]) -> tuple[bool, _Source | Scope | None]:
    for level in levels:
        if alias in level:
            return True, level[alias]
    return False, None


def _all_base(levels: list[dict[str, _Source | Scope | None]]) -> list[_Source]:
    return [s for level in levels for s in level.values() if isinstance(s, _Source)]


def _check_qualified_star(column: exp.Column, levels: list[dict[str, _Source | Scope | None]], f: _Findings) -> None:
    found, source = _lookup(column.table.lower(), levels)
    if not found:  # an alias we cannot place: every table it could be
        for base in _all_base(levels):
            _check_star(base, f)
    elif isinstance(source, _Source):
        _check_star(source, f)


def _check_star(source: _Source, findings: _Findings) -> None:
    role = findings.role
    for table in source.candidates:
        if table.columns is None:
            if role.may_deny_columns_of(table.schema, table.name):
                findings.other.append(
                    f"* over {table.qualified_name} cannot be checked (its columns are not in the catalog) "
                    "and some of its columns may be denied; list the columns you need."
                )
            continue
        denied = role.denied_columns(table.schema, table.name, table.columns)
        if denied:
            findings.star_hints.setdefault(table.qualified_name, denied)
            for column in denied:
                findings.deny_column(table, column)


def _check_qualified(column: exp.Column, levels: list[dict[str, _Source | Scope | None]], f: _Findings) -> None:
    found, source = _lookup(column.table.lower(), levels)
    if not found:
        _check_candidates(column.name, _all_base(levels), f, ambiguous=True)
    elif isinstance(source, _Source):
        _check_candidates(column.name, [source], f, ambiguous=False)
    # a derived table or CTE column: checked inside its definition


def _check_unqualified(column: exp.Column, levels: list[dict[str, _Source | Scope | None]], f: _Findings) -> None:
    """SQL binds an unqualified column to the innermost SELECT with a source that has it; every source
    that may have it at that level (or at any level before, when not sure) is checked."""
    name = column.name
    for level in levels:
        definite = False
        bases = [s for s in level.values() if isinstance(s, _Source)]
        _check_candidates(name, bases, f, ambiguous=True)
        for source in level.values():
            if isinstance(source, _Source):
                definite = definite or any(source.may_have(t, name) for t in source.candidates)
            elif isinstance(source, Scope):
                outputs = _output_names(source)
                definite = definite or (outputs is not None and name.lower() in outputs)
        if definite:
            return
        # PostgreSQL reads an unqualified name that is no column but a source alias as the whole row.
        whole_row = level.get(name.lower())
        if isinstance(whole_row, _Source):
            _check_star(whole_row, f)
            return


def _output_names(scope: Scope) -> set[str] | None:
    """The column names a derived table or CTE gives, or None when unknown (a star)."""
    expression = scope.expression
    if not isinstance(expression, exp.Select):
        return None
    names = set()
    for select in expression.selects:
        if isinstance(select, exp.Star) or (isinstance(select, exp.Column) and isinstance(select.this, exp.Star)):
            return None
        names.add(select.alias_or_name.lower())
    return names


def _check_candidates(name: str, sources: Sequence[_Source], findings: _Findings, *, ambiguous: bool) -> None:
    role = findings.role
    hits = innocent = 0
    for source in sources:
        for table in source.candidates:
            meanings = source.meanings(table, name)
            if meanings is None:  # a renamed column we cannot place: any denied column of the table
                denied = role.denied_columns(table.schema, table.name, table.columns or ())
                if denied or (table.columns is None and role.may_deny_columns_of(table.schema, table.name)):
                    findings.other.append(
                        f"{name} renames a column of {table.qualified_name} that cannot be placed, "
                        "and some of its columns may be denied."
                    )
                    hits += 1
                continue
            # A table whose columns are unknown may have this one: judged by the patterns alone.
            may_have = table.columns is None or source.may_have(table, name)
            denied = [m for m in meanings if role.column_denied(table.schema, table.name, m)]
            if may_have and denied:
                findings.deny_column(table, denied[0])
                hits += 1
            elif may_have:
                innocent += 1
    if hits and innocent and ambiguous:  # the caller may have meant the table whose column is allowed
        hint = (
            f"An unqualified {name} is checked against every table it could belong to; "
            "qualify it with its table's alias."
        )
        if hint not in findings.other:
            findings.other.append(hint)


def _check_join(join: exp.Join, scope: Scope, own: dict[str, _Source | Scope | None], findings: _Findings) -> None:
    """USING (c) and NATURAL joins compare columns by name: a denied one among them is read."""
    bases = [s for s in own.values() if isinstance(s, _Source)]
    for item in join.args.get("using") or ():
        name = item.name if isinstance(item, exp.Expr) else str(item)
        _check_candidates(name, bases, findings, ambiguous=True)
    if str(join.args.get("method") or "").upper() == "NATURAL":
        names: dict[str, int] = {}
        for source in own.values():
            if isinstance(source, _Source):
                for table in source.candidates:
                    for column in {c.lower() for c in table.columns or ()}:
                        names[column] = names.get(column, 0) + 1
        for column, count in names.items():
            if count > 1:
                _check_candidates(column, bases, findings, ambiguous=True)
