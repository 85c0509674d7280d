"""MCP prompts a person picks from a client's menu: explore the database, write a query for a question,
explain a table, review a query for performance.

Each prompt embeds the catalog resources it needs (read through Database like the tools), so the model
starts with the facts instead of spending calls on them. Arguments that name tables complete from the
catalog (completion/complete).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from ..core import Principal
from ..db.types import QueryRefused, TableInfo, TableNotFound
from ..mcp.resources import Prompt, PromptArgument, PromptArgumentsInvalid, text_message
from ..mcp.tools import ToolContext
from .resources import OVERVIEW_URI, DatabaseResources, table_uri

if TYPE_CHECKING:
    from ..db.database import Database
    from ..settings import Settings

MAX_EMBEDDED_TABLES = 8  # descriptions embedded in one prompt (keeps the prompt a readable size)

# How each surface's tools do the steps a prompt asks for ("claude": the SQL tools; "chatgpt": search/fetch).
STEPS = {
    "claude": {
        "describe": "describe_table (or the table resources)",
        "sample": "get_table_sample",
        "find": "list_tables and describe_table",
        "run": "execute_sql",
    },
    "chatgpt": {
        "describe": "search for 'describe <table>' and fetch the result",
        "sample": "search for 'sample <table> limit 5' and fetch it",
        "find": "search for 'list tables' and 'describe <table>'",
        "run": "search (a read query is a search query) and fetch the result",
    },
}


def _resource_message(uri: str, mime_type: str, text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": {"type": "resource", "resource": {"uri": uri, "mimeType": mime_type, "text": text}},
    }


class DatabasePrompts:
    def __init__(
        self, database: Database, settings: Settings, resources: DatabaseResources, toolset: str = "claude"
    ) -> None:
        self.database = database
        self.settings = settings
        self.resources = resources
        self.steps = STEPS[toolset]

    @property
    def _dialect(self) -> str:
        return self.database.dialect_name

    @property
    def _label(self) -> str:
        return self.database.dialect.label

    @property
    def _limit_hint(self) -> str:
        return self.database.dialect.limit_example

    # -- embedded resources ---------------------------------------------------------------------------
    async def _embed(self, uri: str, caller: Principal) -> dict[str, Any]:
        contents = (await self.resources.read(uri, caller=caller))[0]  # what the caller's role may see
        return _resource_message(contents.uri, contents.mime_type or "text/markdown", contents.text or "")

    async def _embed_tables(self, names: list[str], caller: Principal) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        seen: set[str] = set()
        for name in names[:MAX_EMBEDDED_TABLES]:
            try:
                table = await self.database.resolve_table(name, principal=caller)
            except (TableNotFound, QueryRefused) as exc:  # refused: the caller's role may not read it
                raise PromptArgumentsInvalid(str(exc)) from None
            uri = table_uri(table)
            if uri not in seen:
                seen.add(uri)
                messages.append(await self._embed(uri, caller))
        return messages

    # -- the prompts ------------------------------------------------------------------------------------
    async def explore_database(self, arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        focus = arguments.get("focus", "").strip()
        goal = f" with this in mind: {focus}" if focus else ""
        return [
            await self._embed(OVERVIEW_URI, ctx.principal),
            text_message(
                f"Above is the list of tables and views in this {self._label} database. Explore it{goal}. "
                "Pick the tables that look central (most rows, most referenced), read their descriptions with "
                f"{self.steps['describe']}, follow the foreign keys, and look at a few rows with "
                f"{self.steps['sample']}. Then summarise: what the database is about, the main entities and how they "
                "relate, and five questions it could answer, each with the read-only query that answers it."
            ),
        ]

    async def write_query(self, arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        question = arguments["question"].strip()
        names = [n.strip() for n in arguments.get("tables", "").split(",") if n.strip()]
        embedded = await self._embed_tables(names, ctx.principal)
        where = (
            "Use the table descriptions above."
            if embedded
            else f"Find the relevant tables first with {self.steps['find']}."
        )
        return [
            *embedded,
            text_message(
                f"Write one read-only {self._label} query that answers this question:\n\n{question}\n\n{where} "
                f"Qualify ambiguous columns, join on the foreign keys, and use {self._limit_hint} when only a "
                f"few rows are needed. Run it with {self.steps['run']}, check that the result answers the question, "
                "then show the final query and a short explanation of the answer."
            ),
        ]

    async def explain_table(self, arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        embedded = await self._embed_tables([arguments["table"].strip()], ctx.principal)
        column = arguments.get("column", "").strip()
        focus = (
            f" Pay most attention to the column {column}: what its values mean, how they are distributed "
            "(use a GROUP BY query) and what refers to it."
            if column
            else ""
        )
        return [
            *embedded,
            text_message(
                "Explain the table described above to someone new to this database: what one row represents, "
                "what each column means (guess from names and types, and say when you are guessing), the keys "
                "and what they link to, and which indexes support which lookups. Look at a few rows with "
                f"{self.steps['sample']} to confirm, and finish with three useful example queries.{focus}"
            ),
        ]

    async def review_query(self, arguments: dict[str, str], ctx: ToolContext) -> list[dict[str, Any]]:
        query = arguments["query"].strip()
        embedded = await self._embed_tables(self._tables_in(query), ctx.principal)
        return [
            *embedded,
            text_message(
                f"Review this {self._label} query for performance:\n\n```sql\n{query}\n```\n\n"
                "Using the table descriptions above (columns, keys, indexes, row estimates), point out what "
                "would be slow: scans where an index could seek, non-sargable predicates (functions on indexed "
                "columns, leading wildcards, implicit conversions), SELECT *, missing join conditions, "
                "row-by-row patterns, sorting or DISTINCT without need. Suggest a rewritten query and any index "
                "that would help (as a suggestion only; this service does not change the schema)."
            ),
        ]

    def _tables_in(self, query: str) -> list[str]:
        """Table names a query reads (CTE names excluded)."""
        try:
            trees = sqlglot.parse(query, read=self.database.dialect.sqlglot)
        except SqlglotError:
            raise PromptArgumentsInvalid("the query could not be parsed; check its syntax") from None
        names: list[str] = []
        for tree in trees:
            if tree is None:
                continue
            ctes = {cte.alias_or_name.casefold() for cte in tree.find_all(exp.CTE)}
            for table in tree.find_all(exp.Table):
                if not table.name or table.name.casefold() in ctes:
                    continue
                name = f"{table.db}.{table.name}" if table.db else table.name
                if name not in names:
                    names.append(name)
        return names

    # -- completions ------------------------------------------------------------------------------------
    async def complete(self, argument: str, value: str, context: Mapping[str, str], caller: Principal) -> list[str]:
        """Table and column names the caller's role may read (app.mcp's caller_complete)."""
        if argument == "table":
            return _table_names(await self.database.list_tables(principal=caller))
        if argument == "column":  # the columns of the table chosen so far
            table = context.get("table", "").strip()
            if not table:
                return []
            try:
                description = await self.database.describe_table(table, principal=caller)
            except (TableNotFound, QueryRefused):
                return []
            return [column.name for column in description.columns]
        if argument == "tables":  # a comma-separated list: complete its last item
            head = value.rpartition(",")[0]
            prefix = f"{head.strip()}, " if head.strip() else ""
            done = {n.strip().casefold() for n in head.split(",") if n.strip()}
            return [
                prefix + name
                for name in _table_names(await self.database.list_tables(principal=caller))
                if name.casefold() not in done
            ]
        return []

    def prompts(self) -> list[Prompt]:
        table_help = "A table or view name, e.g. customers or sales.orders (completes from the catalog)."
        return [
            Prompt(
                "explore_database",
                "Explore the database",
                "Get to know this database: its tables, how they relate, and what it can answer.",
                self.explore_database,
                [PromptArgument("focus", "Optional: what you care about (e.g. 'sales by region').")],
            ),
            Prompt(
                "write_query",
                "Write a query for a question",
                "Turn a question in plain words into a read-only SQL query, run it and explain the answer.",
                self.write_query,
                [
                    PromptArgument("question", "The question the query should answer.", required=True),
                    PromptArgument("tables", "Optional: comma-separated tables to start from (completes)."),
                ],
                caller_complete=self.complete,
            ),
            Prompt(
                "explain_table",
                "Explain a table",
                "What a table or view holds: its columns, keys, relationships and indexes, with examples.",
                self.explain_table,
                [
                    PromptArgument("table", table_help, required=True),
                    PromptArgument("column", "Optional: a column to focus on (completes from the table's columns)."),
                ],
                caller_complete=self.complete,
            ),
            Prompt(
                "review_query",
                "Review a query for performance",
                "Find what would make a query slow, using the tables' indexes and sizes, and suggest a fix.",
                self.review_query,
                [PromptArgument("query", "The SQL query to review.", required=True)],
            ),
        ]


def _table_names(tables: list[TableInfo]) -> list[str]:
    """Qualified names, plus the bare name where it is unambiguous (people type `orders`, not `public.orders`)."""
    counts: dict[str, int] = {}
    for table in tables:
        counts[table.name.casefold()] = counts.get(table.name.casefold(), 0) + 1
    names: list[str] = []
    for table in tables:
        if table.qualified_name != table.name and counts[table.name.casefold()] == 1:
            names.append(table.name)
        names.append(table.qualified_name)
    return names
