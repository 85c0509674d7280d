"""Short event-loop passes (issue 10, app.loop_pass): once a pass has had its share, the next read waits for
a later pass, first come first served, nobody starves and nothing is lost; a client that leaves before its
request was read is no server error."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest

from app import keys
from app.loop_pass import LoopPass
from tests.fixtures.calls import EXECUTE_SQL_HEADERS, MODERN, execute_sql_call


class PassCounter:
    """Counts the passes of the running loop: a callback that schedules itself again every pass."""

    def __init__(self) -> None:
        self.number = 0
        self._stopped = False

    def start(self) -> None:
        asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._stopped = True

    def _tick(self) -> None:
        if not self._stopped:
            self.number += 1
            asyncio.get_running_loop().call_soon(self._tick)


async def test_past_the_budget_each_waits_for_a_later_pass_in_the_order_they_came() -> None:
    loop_pass = LoopPass(budget=0.0)  # every pass has room for one
    passes = PassCounter()
    passes.start()
    ran: list[tuple[str, int]] = []

    async def request(name: str) -> None:
        if loop_pass.spent():
            await loop_pass.turn()
        ran.append((name, passes.number))

    await asyncio.sleep(0)  # start on a pass boundary
    await asyncio.gather(*(request(name) for name in "abcde"))
    passes.stop()
    assert [name for name, _ in ran] == list("abcde")
    numbers = [number for _, number in ran]
    assert numbers == sorted(set(numbers)), f"two requests ran in one pass: {ran}"


def _recorded(loop_pass: LoopPass, ran: list[Any]) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """A request that takes its turn, then notes its name in `ran`."""

    async def request(name: Any) -> None:
        if loop_pass.spent():
            await loop_pass.turn()
        ran.append(name)

    return request


async def test_nobody_asking_anew_goes_ahead_of_one_in_line() -> None:
    loop_pass = LoopPass(budget=0.0)
    ran: list[str] = []
    request = _recorded(loop_pass, ran)
    await asyncio.sleep(0)
    assert not loop_pass.spent()  # the first ask of this pass: through
    waiting = asyncio.ensure_future(request("waited"))
    await asyncio.sleep(0)  # it is in line now
    late = asyncio.ensure_future(request("came later"))
    await asyncio.gather(waiting, late)
    assert ran == ["waited", "came later"]


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_clients_that_come_back_at_once_do_not_starve_the_others() -> None:
    """16 clients in a closed loop, each a little work before and after its turn. Without tickets a waiter lined
    up again at its own place in the pass and lost every time to the three that finished first and came back."""
    loop_pass = LoopPass(budget=0.001)
    done = [0] * 16
    stop = time.perf_counter() + 0.6

    async def client(i: int) -> None:
        while time.perf_counter() < stop:
            await asyncio.sleep(0)  # the next request arrives
            _busy(0.0001)
            if loop_pass.spent():
                await loop_pass.turn()
            _busy(0.0003)
            done[i] += 1

    await asyncio.gather(*(client(i) for i in range(16)))
    assert min(done) >= max(done) / 2, done


async def test_a_cancelled_waiter_leaves_the_line_and_the_rest_go_on() -> None:
    loop_pass = LoopPass(budget=0.0)
    ran: list[int] = []
    request = _recorded(loop_pass, ran)
    await asyncio.sleep(0)
    assert not loop_pass.spent()
    tasks = [asyncio.ensure_future(request(n)) for n in range(4)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert ran == [0, 2, 3]
    await asyncio.sleep(0)  # a pass later nobody is in line: the next ask goes through
    await asyncio.sleep(0)
    assert not loop_pass.spent()


async def test_a_pass_with_time_left_lets_requests_through_at_once() -> None:
    loop_pass = LoopPass(budget=60.0)
    passes = PassCounter()
    passes.start()
    await asyncio.sleep(0)
    first = passes.number
    assert not any(loop_pass.spent() for _ in range(100))
    await loop_pass.turn()
    assert passes.number == first  # nobody waited
    passes.stop()


def _call(n: int) -> dict[str, Any]:
    return execute_sql_call(n, {"query": f"SELECT {n} AS n"})


async def test_parallel_calls_over_http_take_turns_and_all_get_their_answer(
    start_live_server: Callable[..., Any], make_settings: Callable[..., Any]
) -> None:
    from app.web import create_app

    app = create_app(make_settings(unauthenticated=True, db_pool_size=4))
    app[keys.DATABASE].loop_pass.budget = 0.0  # one read per pass
    server = await start_live_server(app)
    passes = PassCounter()
    connector = aiohttp.TCPConnector(limit=48)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def call(n: int) -> Any:
            async with http.post(
                server.endpoint("/mcp"), data=json.dumps(_call(n)), headers=EXECUTE_SQL_HEADERS
            ) as response:
                assert response.status == 200, await response.text()
                return await response.json()

        await call(0)  # warm: the first call plans the statement shape
        passes.start()
        started = passes.number
        answers = await asyncio.gather(*(call(n) for n in range(1, 49)))
        passes.stop()
    for n, answer in enumerate(answers, start=1):
        assert answer["id"] == n
        assert answer["result"]["structuredContent"]["rows"] == [[n]], answer
    # 48 reads, one per pass, each to its caller.
    assert passes.number - started >= 48


async def test_a_client_that_leaves_before_its_body_arrived_is_no_server_error(
    start_live_server: Callable[..., Any], make_settings: Callable[..., Any], captured_logs: Any
) -> None:
    server = await start_live_server(make_settings(unauthenticated=True))
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(_call(1)).encode()
    head = (
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nMCP-Protocol-Version: {MODERN}\r\nMcp-Method: tools/call\r\n"
        f"Mcp-Name: execute_sql\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + body[:10])  # half the body, then gone
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    for _ in range(50):
        if captured_logs.events("http_request", status=499):
            break
        await asyncio.sleep(0.02)
    assert captured_logs.events("http_request", status=499), captured_logs.text
    errors = [line for line in captured_logs.lines() if line.get("level") in ("error", "critical")]
    assert errors == []
    assert "Traceback" not in captured_logs.text
    # ...and the server answers the next client as usual.
    headers = {**EXECUTE_SQL_HEADERS, "Accept": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.endpoint("/mcp"), data=body, headers=headers) as response,
    ):
        assert response.status == 200
        assert (await response.json())["result"]["structuredContent"]["rows"] == [[1]]


@pytest.mark.parametrize("dialect", ["mssql", "postgres", "sqlite"])
def test_the_start_up_statement_goes_through_the_whole_check_in_every_dialect(dialect: str) -> None:
    """Database.start checks it so that sqlglot's first-use set-up is not paid by a caller's statement on the
    event loop: it must be parsed and accepted, not refused early."""
    from app.db import guard
    from app.db.database import WARM_UP_SQL

    verdict = guard.check(WARM_UP_SQL, dialect)
    assert verdict.allowed, verdict.reason
    assert verdict.tree is not None
