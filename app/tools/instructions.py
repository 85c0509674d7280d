"""Server instructions sent in `initialize`.

ChatGPT shows only the first 512 characters, so the first paragraph is a self-contained summary
(what database, read-only or not, which tools, the limits); details follow after a blank line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..db.dialects import dialect_class

if TYPE_CHECKING:
    from ..settings import Settings

SUMMARY_LIMIT = 512


def _limits(settings: Settings) -> str:
    return (
        f"Results hold at most {settings.max_rows:,} rows and about {settings.max_result_bytes:,} bytes; "
        f"each query stops after {settings.query_timeout_seconds:g} s."
    )


def _claude(settings: Settings, dialect: str) -> tuple[str, list[str]]:
    backend = settings.db_backend
    if settings.read_only_mode:
        access = "read-only access"
        sql = "execute_sql to run one SELECT (writes are refused)"
    else:
        access = "read-write access"
        sql = "execute_sql to run SQL (writes need the writer role and are committed)"
    summary = (
        f"This server gives {access} to a {dialect} database. Use list_tables to find tables and views, "
        f"describe_table for columns and keys, get_table_sample for example rows, and {sql}. "
        f"{_limits(settings)} If a result says truncated, narrow the query."
    )
    details = [
        "Workflow: list_tables -> describe_table on the tables that matter -> execute_sql. Prefer filtering "
        "(WHERE), aggregation (GROUP BY, COUNT, SUM) and "
        + dialect_class(backend).limit_syntax
        + " in SQL over fetching whole tables; results that hit a limit come back with truncated=true and a note.",
        _dialect_tips(backend),
        "Table names may be given with or without schema and in any case; an unknown name gets an error listing "
        "the closest names. A refused statement says what was refused and why; a timeout means the query should "
        "be made cheaper (filter on indexed columns).",
    ]
    if settings.read_only_mode:
        details.append(
            "Read-only mode: exactly one read statement per call (SELECT, WITH ... SELECT, set "
            "operations, VALUES). INSERT/UPDATE/DELETE, DDL, EXEC, transactions and SET are refused."
        )
    else:
        details.append(
            "Writes are enabled for accounts with the writer role: each statement runs in a transaction "
            "committed only on success. Confirm with the user before changing data."
        )
    return summary, details


def _chatgpt(settings: Settings, dialect: str) -> tuple[str, list[str]]:
    access = "read-only" if settings.read_only_mode else "read-write (search and fetch only read)"
    summary = (
        f"Search and fetch records of a {access} {dialect} database. search takes 'list tables', "
        "'describe <table>', 'sample <table> limit <n>', a SELECT statement, or keywords (found in the data and "
        "in table names), and returns ids. fetch(id) returns a table's columns, keys and first rows, "
        f"a row's values, or a query's full result. {_limits(settings)}"
    )
    details = [
        "Ids: table:<schema>.<table>, row:<schema>.<table>:<primary key>, sample:<table>:<n> and query:~<digest>. "
        "Table and row ids are re-read from the database whenever they are fetched; query result ids are kept "
        f"for {settings.cache_ttl_seconds} s. Each result's url is a page of this service showing the record "
        "(it needs the same sign-in).",
        "For questions about the data, search with a SELECT that filters and aggregates, then fetch the first "
        "result (the whole result set). Rows of a single-table SELECT that includes the primary key are also "
        f"returned as row ids. At most {settings.max_search_results} results per search.",
        _dialect_tips(settings.db_backend),
    ]
    if settings.chatgpt_include_claude_tools:
        details.append(
            "This endpoint also offers list_tables, describe_table, get_table_sample and execute_sql "
            "for direct SQL work."
        )
    return summary, details


def _dialect_tips(backend: str) -> str:
    return dialect_class(backend).sql_tips


def build_instructions(settings: Settings, toolset: str) -> str:
    if toolset not in ("claude", "chatgpt"):
        raise ValueError(f"unknown tool set {toolset!r}")
    dialect = dialect_class(settings.db_backend).label
    summary, details = (_claude if toolset == "claude" else _chatgpt)(settings, dialect)
    if len(summary) > SUMMARY_LIMIT:  # only with absurd limits; keep the visible part whole sentences
        summary = summary[:SUMMARY_LIMIT].rsplit(". ", 1)[0] + "."
    return "\n\n".join([summary, *details])
