"""Benchmark peer: the smallest reasonable MCP server on the official Python SDK (`mcp` 2.x).

One tool, `execute_sql(query)`, running the statement through pyodbc's SQLite3 ODBC driver in a worker
thread (the SDK runs on anyio/Starlette/uvicorn; a driver call must not block the event loop). Connections
come from a fixed pool of the same size as our service's default (4), so both servers hold the same number
of database connections. Streamable HTTP, stateless, plain JSON responses: the SDK's fastest settings.

    python bench/sdk_server.py --port 8101 --database /abs/path/demo.db
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import queue
import uuid
from typing import Any

import anyio.to_thread
import pyodbc
from mcp.server.mcpserver import MCPServer

MAX_ROWS = 1000  # same default row cap as our service


def _jsonable(value: Any) -> Any:
    """pyodbc gives Decimal/date/bytes/UUID for some columns; the SDK's JSON encoder needs plain types."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.date, dt.time, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


class Pool:
    """A fixed set of pyodbc connections; a worker thread borrows one for the duration of a query."""

    def __init__(self, database: str, size: int) -> None:
        # mode=ro: the same read-only open our service uses for SQLite.
        conn_str = f"DRIVER={{SQLite3}};Database=file:{database}?mode=ro"
        self._idle: queue.Queue[pyodbc.Connection] = queue.Queue()
        for _ in range(size):
            self._idle.put(pyodbc.connect(conn_str, autocommit=True))

    def run(self, sql: str) -> dict[str, Any]:
        conn = self._idle.get()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(sql)
                columns = [d[0] for d in cursor.description or ()]
                rows = cursor.fetchmany(MAX_ROWS + 1)
            finally:
                cursor.close()
        finally:
            self._idle.put(conn)
        truncated = len(rows) > MAX_ROWS
        return {
            "columns": columns,
            "rows": [[_jsonable(v) for v in row] for row in rows[:MAX_ROWS]],
            "row_count": min(len(rows), MAX_ROWS),
            "truncated": truncated,
        }


def build_server(database: str, pool_size: int) -> MCPServer:
    pool = Pool(database, pool_size)
    server = MCPServer(name="sdk-sqlite-bench", version="1.0", log_level="WARNING")

    @server.tool()
    async def execute_sql(query: str) -> dict[str, Any]:
        """Run one SQL statement against the SQLite database and return its rows."""
        return await anyio.to_thread.run_sync(pool.run, query)

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--pool-size", type=int, default=4)
    args = parser.parse_args()
    server = build_server(args.database, args.pool_size)
    server.run("streamable-http", host=args.host, port=args.port, json_response=True, stateless_http=True)


if __name__ == "__main__":
    main()
