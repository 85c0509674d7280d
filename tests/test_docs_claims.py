"""What README and docs/tools.md promise about ids and result sizes is what the code does.

- Every id example written for the demo (SQLite) is fetched through the official SDK client and comes
  back as the same id; a `query:` example has the real shape (it answers "no longer cached", not "invalid").
- The Claude result-size statements match the `_meta` the tools declare (no stale "~150,000" limit).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from mcp import Client

from app.settings import Settings, load_settings
from app.tools.common import result_size_meta
from tests.fixtures.app import LiveServer

ROOT = Path(__file__).resolve().parents[1]
ID_DOCS = [ROOT / "README.md", ROOT / "docs" / "tools.md"]
SIZE_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ID_EXAMPLE = re.compile(r"(?<![\w/<])((?:table|row|sample|query):[A-Za-z0-9_.,:~$-]*[A-Za-z0-9_~])")
# Forms that are not the demo's: other backends' schemas, placeholders, and the one documented alias.
NOT_DEMO = ("dbo.", "public.", "main.")


def _examples() -> set[str]:
    found = {m.group(1) for path in ID_DOCS for m in ID_EXAMPLE.finditer(path.read_text(encoding="utf-8"))}
    # `~` names/keys in the docs are the SQL Server `dbo.[Order Details]` example; query ids are all `~`.
    return {
        i
        for i in found
        if not any(marker in i for marker in NOT_DEMO)
        and not i.endswith(":~")
        and (i.startswith("query:~") or "~" not in i)
    }


async def test_demo_id_examples_fetch_as_themselves(
    start_live_server: Callable[..., Awaitable[LiveServer]], make_settings: Callable[..., Settings]
) -> None:
    examples = _examples()
    plain = {i for i in examples if not i.startswith("query:")}
    assert {"table:customers", "row:order_lines:17,2"} <= plain, sorted(examples)
    server = await start_live_server(make_settings())
    async with Client(server.url + "/chatgpt/mcp", mode="legacy") as client:
        for record_id in sorted(plain):
            result = await client.call_tool("fetch", {"id": record_id})
            assert result.is_error is not True, (record_id, result.content[0].text)
            assert json.loads(result.content[0].text)["id"] == record_id
        for record_id in sorted(examples - plain):
            result = await client.call_tool("fetch", {"id": record_id})
            assert result.is_error is True
            assert "not a valid id" not in result.content[0].text, (record_id, result.content[0].text)


def test_result_size_statements_match_the_declared_meta() -> None:
    for path in SIZE_DOCS:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"150,000[- ]character|~150,000|150k", text), path
    defaults = load_settings(environ={}, env_file=None, db_backend="sqlite", sqlite_path="unused.db")
    declared = result_size_meta(defaults)["anthropic/maxResultSizeChars"]
    tools_md = (ROOT / "docs" / "tools.md").read_text(encoding="utf-8")
    assert f"**{declared:,} characters at the defaults**" in tools_md
    assert "MAX_MCP_OUTPUT_TOKENS" in tools_md and "50,000" in tools_md
    from app.settings import SETTINGS

    [help_text] = [s.help for s in SETTINGS if s.name == "max_result_bytes"]
    assert "150,000" not in help_text and "MAX_MCP_OUTPUT_TOKENS" in help_text


async def test_query_ids_live_only_in_the_cache_as_documented(
    start_live_server: Callable[..., Awaitable[LiveServer]], make_settings: Callable[..., Settings]
) -> None:
    """docs/tools.md: CACHE_TTL_SECONDS=0 turns the cache off and then a query id cannot be fetched at all;
    table: and row: ids are read again from the database; the same SQL gives the same query id back."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "re-fetchable after the" not in readme  # the old claim covered query ids too
    server = await start_live_server(make_settings(cache_ttl_seconds=0))
    sql = "SELECT customer_id, last_name FROM customers LIMIT 2"
    async with Client(server.url + "/chatgpt/mcp", mode="legacy") as client:
        first = json.loads((await client.call_tool("search", {"query": sql})).content[0].text)["results"]
        again = json.loads((await client.call_tool("search", {"query": sql})).content[0].text)["results"]
        query_id = first[0]["id"]
        assert query_id.startswith("query:~") and again[0]["id"] == query_id
        expired = await client.call_tool("fetch", {"id": query_id})
        assert expired.is_error is True and "no longer cached" in expired.content[0].text
        assert "search again" in expired.content[0].text.lower()
        row = await client.call_tool("fetch", {"id": first[1]["id"]})
        assert row.is_error is not True and first[1]["id"].startswith("row:customers:")
