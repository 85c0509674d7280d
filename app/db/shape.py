"""The shape of a checked statement: whether it is a plain single-table SELECT, and which of its output
columns are that table's own columns (ChatGPT's search turns such rows into re-fetchable row ids).

Computed once by the guard from the tree it already parsed (guard.Verdict.shape), never by parsing again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp


@dataclass(frozen=True, slots=True)
class SelectShape:
    """A single-table SELECT: which table, and which output columns are that table's own columns."""

    schema: str | None
    name: str
    star: bool
    plain: dict[str, str] = field(default_factory=dict)  # output column (lower case) -> table column
    computed: frozenset[str] = frozenset()  # output columns that are expressions

    def source_of(self, output: str) -> str | None:
        """The table column an output column shows unchanged, if any (case-insensitive)."""
        key = output.lower()
        if key in self.plain:
            return self.plain[key]
        if key in self.computed:  # an expression named like a column is not that column
            return None
        return key if self.star else None


def select_shape_of(tree: exp.Expr | None) -> SelectShape | None:
    """Recognise `SELECT cols FROM one_table [WHERE/ORDER/LIMIT]` so its rows can become row ids.

    Anything with joins, grouping, DISTINCT, aggregates, CTEs or set operations is a derived result
    set and has no shape (None).
    """
    if not isinstance(tree, exp.Select) or tree.args.get("with_") or tree.args.get("with"):
        return None
    if tree.args.get("joins") or tree.args.get("group") or tree.args.get("distinct") or tree.args.get("having"):
        return None
    source = tree.args.get("from_") or tree.args.get("from")
    if source is None or not isinstance(source.this, exp.Table) or not source.this.name:
        return None
    if any(projection.find(exp.AggFunc) is not None for projection in tree.expressions):
        return None
    star, plain, computed = False, {}, set()
    for projection in tree.expressions:
        if isinstance(projection, exp.Star) or (
            isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
        ):
            star = True
            continue
        output = projection.alias_or_name.lower()
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(inner, exp.Column) and isinstance(inner.this, exp.Identifier) and output not in plain:
            plain[output] = inner.name.lower()
        else:
            computed.add(output)
    for output in computed:
        plain.pop(output, None)
    table = source.this
    return SelectShape(table.db or None, table.name, star, plain, frozenset(computed))
