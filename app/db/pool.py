"""A bounded pool: N pyodbc connections, each owned by one dedicated worker thread.

Execution model (after datasette's): the event loop makes no driver call, with one exception: a read on
an engine inside this process (SQLite in WAL mode, Dialect.reads_inline) runs on the loop within
SQLITE_INLINE_READ_MS, on an idle worker's connection (Pool._run_inline; datasette too can run SQLite on its
loop), and moves to a worker thread when it takes longer. Otherwise a call hands its job to a
free worker through the worker's queue, or, when every worker is busy, puts it in line (at most
`db_pool_max_waiting` jobs, waiting at most `db_pool_wait_seconds` to start, else DatabaseBusy); it awaits
an asyncio future that the worker completes with `loop.call_soon_threadsafe`. A worker that finishes a job
takes the next one in line itself, in its own thread: under load it runs job after job without sleeping,
and no hand-off waits for the event loop. The thread count is fixed: N workers + 1 watchdog.

- Time limits: each job has a deadline. One watchdog thread sleeps until the earliest deadline and
  stops the statement from outside the worker: `cursor.cancel()` (ODBC's SQLCancel, meant to be called from
  another thread), or, where the driver frees the statement in SQLCancel, the dialect's way
  (Dialect.connect_interruptible: sqlite3_interrupt; Dialect.cancel_session_sql: pg_cancel_backend over
  the SessionCanceller's own connection). Client cancellation (the awaiting task is cancelled) goes through
  the same thread, so even PostgreSQL's cancel (a network round trip) never runs on the loop. Servers add
  their own backstop (statement_timeout, the SQL Server query timeout), set once per session.
- Dead connections are recognised by SQLSTATE (errors.is_dead_connection), closed and replaced; a read
  that failed that way before returning any rows is retried once on the fresh connection. Connecting
  failures back off exponentially (shared by all workers, reset by any success; see Pool._claim_attempt).
  Workers connect in the background at start and keep idle connections alive with a cheap ping, so
  /health shows the truth and recovery needs no traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import pyodbc
import structlog

from .dialects.base import Dialect
from .errors import clean_message, is_cancel, is_dead_connection, is_deadlock, is_server_timeout, sqlstate_of
from .types import DatabaseBusy, DatabaseError, DatabaseUnavailable, QueryCancelled, QueryFailed, QueryTimeout

# Our pool replaces the driver manager's; its pooled handles would survive a server restart as dead ones.
pyodbc.pooling = False

log = structlog.get_logger(__name__)

T = TypeVar("T")
V = TypeVar("V")

INITIAL_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0
# Connecting and disconnecting happen one at a time in the process: with several pool threads closing their
# connections at once (shutdown) the test suite crashed inside the ODBC drivers (SQLDisconnect racing
# SQLDisconnect or SQLDriverConnect). Both are rare (start-up, recovery, shutdown), so the lock costs nothing.
DRIVER_LIFECYCLE_LOCK = threading.Lock()
# A refused login is retried slowly: it needs an operator, and SQL Server locks logins after repeated
# failures where a password policy is on.
LOGIN_REFUSED_BACKOFF_SECONDS = 30.0
MAX_LOGIN_REFUSED_BACKOFF_SECONDS = 300.0
KEEPALIVE_SECONDS = 30.0
MIN_IDLE_WAKE_SECONDS = 0.05
PROBE_GAP_SECONDS = 0.05
CLOSE_GRACE_SECONDS = 5.0
WATCHDOG_IDLE_TICK_SECONDS = 1.0
# Inline reads (Pool._run_inline): a statement that outran its budget goes to a worker thread for this long;
# at most this many such statements are remembered.
INLINE_SLOW_SECONDS = 60.0
INLINE_SLOW_MAX = 1024
# A statement goes to a thread once at least one in this many of its runs outran the budget (two at least):
# a slow statement outruns it every time, a quick one only when the machine took its core away meanwhile.
INLINE_SLOW_SHARE = 5
# ...and only runs that used at least this share of the budget in CPU time count: the others waited.
INLINE_SLOW_CPU_SHARE = 0.5
INLINE_ACTIVE_SECONDS = 1.0
BUSY_MESSAGE = "database busy, retry in a moment"


def format_seconds(seconds: float) -> str:
    return f"{seconds:g}"


class _Interrupted(Exception):
    """Raised inside a worker when the watchdog cancelled the job before its statement started."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Strikes:
    """A statement's runs on the loop, and how many outran the budget, since the first that did."""

    __slots__ = ("overruns", "runs", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.runs = 1
        self.overruns = 1


class _Job(Generic[T]):
    __slots__ = ("cancelled", "fn", "future", "limit", "queued_at", "retry", "timeout", "worker")

    def __init__(
        self,
        fn: Callable[[Worker], T],
        future: asyncio.Future[T],
        timeout: float,
        retry: bool,
        limit: float | None = None,
    ) -> None:
        self.fn = fn
        self.future = future  # Pool._inline_future (never completed) for a job run on the loop
        self.timeout = timeout  # seconds this run may take
        self.limit = timeout if limit is None else limit  # the call's time limit, as its error message says
        self.retry = retry
        self.cancelled = False  # set on the loop before a cancel request; read by the worker when it arms
        self.worker: Worker | None = None  # who runs it, set (under the pool's hand-off lock) when it is taken
        self.queued_at = 0.0  # perf_counter when it was put in line


class SessionCanceller:
    """Stops the statement of another session with the dialect's cancel_session_sql, over a connection of its
    own that only the watchdog thread uses (opened when first needed, again after a failure)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._conn: pyodbc.Connection | None = None

    def cancel(self, session_id: object) -> None:
        sql = self._pool.dialect.cancel_session_sql
        assert sql is not None
        for attempt in range(2):  # a canceller connection that died meanwhile is replaced once
            try:
                if self._conn is None:
                    with DRIVER_LIFECYCLE_LOCK:
                        self._conn = self._pool.dialect.connect(self._pool.connection_string)
                    self._conn.autocommit = True
                cursor = self._conn.cursor()
                try:
                    cursor.execute(sql, session_id).fetchall()
                finally:
                    cursor.close()
                return
            except pyodbc.Error as exc:
                self.close()
                if attempt:  # the server's own statement_timeout still ends the statement
                    log.warning("db.cancel_failed", error=clean_message(exc, self._pool.secrets))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with DRIVER_LIFECYCLE_LOCK, contextlib.suppress(Exception):
                conn.close()


class Watchdog:
    """One thread that enforces every worker's deadline and carries out cancel requests."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._workers: list[Worker] = []
        self._requests: list[tuple[Worker, object]] = []
        self._wake_at = -math.inf  # -inf while scanning: arming need not wake us then
        self._stopped = False
        # While reads run on the loop (Pool._run_inline), ticks this often, so arming their short deadlines
        # needs no wake-up: the loop never waits for this thread to take the lock it sleeps on.
        self.inline_tick = 0.0
        self.inline_until = -math.inf  # monotonic time until which inline_tick applies
        self.canceller: SessionCanceller | None = None  # set by the pool where the dialect cancels by SQL
        self.thread = threading.Thread(target=self._main, name="db-watchdog", daemon=True)

    def start(self, workers: list[Worker]) -> None:
        self._workers = list(workers)
        self.thread.start()

    def arm(self, worker: Worker, deadline: float) -> None:
        with self._cond:
            worker.deadline = deadline
            if deadline < self._wake_at:
                self._cond.notify()

    def request_cancel(self, worker: Worker, job: object) -> None:
        """Called on the event loop: only queues the request, never touches the driver."""
        with self._cond:
            self._requests.append((worker, job))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _main(self) -> None:
        try:
            self._watch()
        finally:
            if self.canceller is not None:
                self.canceller.close()

    def _watch(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                requests, self._requests = self._requests, []
                due = [w for w in self._workers if w.deadline <= now]
                if requests or due:
                    self._cond.release()
                    try:
                        for worker, job in requests:
                            worker.interrupt(job, "cancelled")
                        for worker in due:
                            worker.interrupt(None, "timeout")
                    finally:
                        self._cond.acquire()
                    continue
                wake_at = min((w.deadline for w in self._workers), default=math.inf)
                # With nothing armed, tick anyway: then arming a job with an ordinary (longer) limit needs
                # no wake-up, which keeps the per-call cost to one uncontended lock.
                tick = self.inline_tick if now < self.inline_until else WATCHDOG_IDLE_TICK_SECONDS
                wake_at = min(wake_at, now + tick)
                self._wake_at = wake_at
                self._cond.wait(max(0.0, wake_at - now))
                self._wake_at = -math.inf


class Worker:
    """One thread, one connection. Job functions receive the worker as their session:
    `session.cursor()` (a cursor the watchdog can cancel), `session.conn`, `session.rows_returned`,
    `session.wrote` (a job that may change the session says so), `session.guarded_read` (a read the guard
    accepted, which can leave less behind). Jobs need not roll back: after every job
    the worker ends the call with the dialect's rollback-and-reset (Dialect.end_call), so nothing a call did
    (transaction, locks, settings, temp objects, prepared statements) outlives it."""

    def __init__(self, pool: Pool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.dialect: Dialect = pool.dialect
        self.jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self.lock = threading.Lock()  # job, cursors and cancel_reason, shared with the watchdog
        # Held by whoever uses the connection outside this thread's own jobs: a read run on the loop, or this
        # thread's keep-alive ping between jobs. Neither waits for it: the loop hands the read to a thread.
        self.session_lock = threading.Lock()
        self.conn: pyodbc.Connection | None = None
        # What stops a statement on `conn` (Dialect.connect_interruptible's, or the SessionCanceller's); set and
        # cleared under `lock`, so never used on a closed connection
        self._interrupt_engine: Callable[[], None] | None = None
        self.inline_ok = False  # Dialect.reads_inline, asked once per connection
        self.deadline = math.inf
        self.job: object | None = None
        self.cancel_reason: str | None = None
        self.rows_returned = False
        self.wrote = False
        self.guarded_read = False
        self._cursors: list[pyodbc.Cursor] = []
        # Dialect.reuses_prepared_reads: the cursor a read's statement stays prepared on between calls, the
        # schema stamp it was prepared under, and a cursor for reading the stamp.
        self._prepared: pyodbc.Cursor | None = None
        self._prepared_stamp: object = None
        self._stamp_cursor: pyodbc.Cursor | None = None
        self._had_connection = False
        self._last_used = time.monotonic()
        self.thread = threading.Thread(target=self._main, name=f"db-worker-{index}", daemon=True)

    # --- the session API job functions use ------------------------------------------------------
    @property
    def connection(self) -> pyodbc.Connection:
        """The open connection: a job always runs on one (a worker connects before it takes a job)."""
        assert self.conn is not None
        return self.conn

    def cursor(self) -> pyodbc.Cursor:
        assert self.conn is not None
        cursor = self.conn.cursor()
        try:
            self._register(cursor)
        except _Interrupted:
            cursor.close()
            raise
        return cursor

    def statement_cursor(self) -> pyodbc.Cursor:
        """The cursor for a read's statement: where the dialect allows it (Dialect.reuses_prepared_reads),
        the connection's one kept cursor, so a statement with parameters that ran before runs again without
        being compiled (pyodbc prepares only when the text changes); a fresh cursor otherwise. The kept cursor
        is given up after a schema change, a failure or a cancel, and with its connection."""
        if not self.dialect.reuses_prepared_reads:
            return self.cursor()
        assert self.conn is not None
        if self._stamp_cursor is None:
            self._stamp_cursor = self.conn.cursor()
        self._register(self._stamp_cursor)  # reading the stamp can wait on a lock: the watchdog may cancel it
        stamp = self.dialect.schema_stamp(self._stamp_cursor)
        if self._prepared is not None and stamp != self._prepared_stamp:
            self.forget_prepared()  # SQLite re-prepares by itself, but the driver would keep the old columns
        if self._prepared is None:
            self._prepared, self._prepared_stamp = self.conn.cursor(), stamp
        self._register(self._prepared)
        return self._prepared

    def _register(self, cursor: pyodbc.Cursor) -> None:
        """Make `cursor` one the watchdog cancels for this job; raise if the job was stopped already."""
        with self.lock:
            reason = self.cancel_reason
            if reason is None:
                self._cursors.append(cursor)
        if reason is not None:
            raise _Interrupted(reason)

    def _own_cursors(self, cursors: list[pyodbc.Cursor]) -> list[pyodbc.Cursor]:
        """The job's cursors without the ones the worker keeps between calls."""
        return [c for c in cursors if c is not self._prepared and c is not self._stamp_cursor]

    def forget_prepared(self) -> None:
        """Close the kept cursor (a statement on it failed, or may be stale); the next read prepares afresh."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            with contextlib.suppress(Exception):
                prepared.close()

    # --- watchdog side ---------------------------------------------------------------------------
    def interrupt(self, job: object | None, reason: str) -> None:
        with self.lock:
            if self.job is None or (job is not None and self.job is not job):
                return  # that job is over; never cancel its successor
            if reason == "timeout" and self.deadline > time.monotonic():
                return
            if self.cancel_reason is None:
                self.cancel_reason = reason
            if self._interrupt_engine is not None:
                self._interrupt_engine()
                self.deadline = time.monotonic() + self.dialect.interrupt_repeat_seconds
                return
            self.deadline = math.inf
            for cursor in self._cursors:
                with contextlib.suppress(Exception):
                    cursor.cancel()

    # --- thread body -----------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            with contextlib.suppress(DatabaseUnavailable):
                self._connect()
            self.pool._first_attempt_done()
            while True:
                try:
                    job = self.jobs.get(timeout=self._idle_wait())
                except queue.Empty:
                    self._maintain()
                    continue
                if job is None:
                    break
                while job is not None:  # then the jobs waiting in line, if any, without sleeping in between
                    job = self._run(job)
        finally:
            self._drop_connection(None, log_it=False)
            self.pool._worker_exited(self)

    def _idle_wait(self) -> float:
        now = time.monotonic()
        if self.conn is None:
            return max(MIN_IDLE_WAKE_SECONDS, self.pool._next_attempt - now)
        return max(MIN_IDLE_WAKE_SECONDS, KEEPALIVE_SECONDS - (now - self._last_used))

    def _maintain(self) -> None:
        """Between jobs: reconnect in the background, or ping a connection that sat idle."""
        if not self.session_lock.acquire(blocking=False):
            return  # the loop is running a read on this connection: it is in use, not idle
        try:
            if self.conn is None:
                if self.pool._claim_attempt(background=True):
                    try:
                        with contextlib.suppress(DatabaseUnavailable):
                            self._connect()
                    finally:
                        self.pool._attempt_done()
            elif time.monotonic() - self._last_used >= KEEPALIVE_SECONDS:
                self._ping()
        finally:
            self.session_lock.release()

    def _ping(self) -> None:
        assert self.conn is not None
        token = object()
        self._arm(token, time.monotonic() + float(self.pool.settings.db_connect_timeout_seconds))
        try:
            cursor = self.cursor()
            cursor.execute(self.dialect.ping_sql)
            cursor.fetchmany(1)
            self.conn.rollback()
        except Exception as exc:  # any failure: the connection is not trustworthy, replace it
            self._drop_connection(exc)
        finally:
            self._disarm()
            self._last_used = time.monotonic()

    def _run(self, job: _Job[Any]) -> _Job[Any] | None:
        """Run one job, then take the next in line (or become idle) before handing back the outcome, so a
        caller that has its result never sees this worker still counted in use. Returns the next job."""
        started = time.perf_counter()
        result: Any = None
        error: BaseException | None = None
        try:
            result = self._execute(job)
        except BaseException as exc:  # handed to the awaiting coroutine, never lost
            error = exc
        elapsed = time.perf_counter() - started
        self._last_used = time.monotonic()
        self.pool._observe(error, elapsed)
        next_job = self.pool._next_job(self)
        self.pool._post(self, job, result, error)
        return next_job

    def _execute(self, job: _Job[T]) -> T:
        deadline = time.monotonic() + job.timeout
        attempt = 0
        while True:
            self._ensure_connected()
            self._arm(job, deadline)
            self.rows_returned = False
            self.wrote = False
            self.guarded_read = False
            failure: Exception | None = None
            try:
                result = job.fn(self)
            except Exception as exc:
                failure = exc
            reason, cursors = self._disarm(close_cursors=False)
            if failure is None:
                self._end_call(cursors, guarded_read=self.guarded_read and not self.wrote)
                return result
            self._recover(failure, cursors)
            if isinstance(failure, _Interrupted) or (reason is not None and isinstance(failure, pyodbc.Error)):
                raise self._interrupted_error(reason or str(getattr(failure, "reason", "timeout")), job.limit)
            if not isinstance(failure, pyodbc.Error):
                raise failure
            if is_dead_connection(failure):
                message = clean_message(failure, self.pool.secrets)
                if job.retry and attempt == 0 and not self.rows_returned and time.monotonic() < deadline:
                    attempt += 1
                    log.info("db.retry_after_dead_connection", worker=self.index, sqlstate=sqlstate_of(failure))
                    continue
                raise DatabaseUnavailable(f"database connection lost: {message}") from None
            if is_deadlock(failure) and job.retry and attempt == 0 and time.monotonic() < deadline:
                # A read chosen as a deadlock victim (SQL Server 1205 under DEADLOCK_PRIORITY LOW, PostgreSQL
                # 40P01) was rolled back by the server: running it once more almost always succeeds. Writes
                # (retry=False) are surfaced, since the caller must decide whether to repeat them.
                attempt += 1
                log.info("db.retry_after_deadlock", worker=self.index, sqlstate=sqlstate_of(failure))
                continue
            if is_server_timeout(failure):
                raise self._interrupted_error("timeout", job.limit)
            if is_cancel(failure):
                raise QueryCancelled("the query was cancelled by the database server") from None
            message = self.dialect.explain_failure(clean_message(failure, self.pool.secrets))
            raise QueryFailed(message, sqlstate_of(failure)) from None

    def _interrupted_error(self, reason: str, timeout: float) -> DatabaseError:
        if reason == "cancelled":
            return QueryCancelled("the query was cancelled")
        return QueryTimeout(f"query exceeded the {format_seconds(timeout)} s time limit and was cancelled")

    def _recover(self, failure: Exception, cursors: list[pyodbc.Cursor]) -> None:
        """After a failed job: end the call as usual, or replace the connection if it is dead or will not
        roll back. A kept statement is never trusted after a failure (or a cancel): it is closed."""
        if self._prepared is not None and self._prepared in cursors:
            self.forget_prepared()
        cursors = self._own_cursors(cursors)
        if self.conn is None or (isinstance(failure, pyodbc.Error) and is_dead_connection(failure)):
            _close(cursors)
            self._drop_connection(failure)
            return
        self._end_call(cursors, guarded_read=False)

    def _end_call(self, cursors: list[pyodbc.Cursor], *, guarded_read: bool) -> None:
        """Close the job's cursors and roll back and reset the session. SQL Server and SQLite close first
        (closing discards unread rows, Microsoft's documented way); psqlODBC after, since its ROLLBACK ends
        the server cursor and a close before it would cost a round trip. A connection that will not reset is
        replaced rather than handed to the next call as it is."""
        closes_first = self.dialect.close_cursors_before_rollback
        prepared = self._prepared
        if prepared is not None and prepared in cursors:
            try:
                # Ends the statement like a close (SQLFreeStmt SQL_CLOSE: unread rows go, the read lock with
                # them) but keeps it prepared: pyodbc's nextset past the last result.
                prepared.nextset()
            except Exception:
                self.forget_prepared()
        cursors = self._own_cursors(cursors)
        if closes_first:
            _close(cursors)
        try:
            if self.conn is not None:
                # The dialect's reset runs on the stamp cursor where there is one (one cursor less per call).
                kept = self._stamp_cursor
                cursor = kept if kept is not None else self.conn.cursor()
                try:
                    self.dialect.end_call(self.conn, cursor, guarded_read=guarded_read)
                finally:
                    if cursor is not kept:
                        cursor.close()
        except Exception as exc:
            self._drop_connection(exc)
        finally:
            if not closes_first:
                _close(cursors)

    def _arm(self, job: object, deadline: float) -> None:
        with self.lock:
            self.job = job
            # A cancel that arrived while the job sat in the queue applies as soon as it starts.
            self.cancel_reason = "cancelled" if getattr(job, "cancelled", False) else None
            self._cursors = []
        self.pool.watchdog.arm(self, deadline)

    def _disarm(self, *, close_cursors: bool = True) -> tuple[str | None, list[pyodbc.Cursor]]:
        """Stop the deadline; return the cancel reason and the job's cursors (closed here unless asked not to:
        then _end_call closes them, in the order the dialect needs)."""
        self.deadline = math.inf
        with self.lock:
            reason = self.cancel_reason
            cursors, self._cursors = self._cursors, []
            self.job = None
        if close_cursors:
            _close(cursors)
            cursors = []
        return reason, cursors

    # --- connection lifecycle --------------------------------------------------------------------
    def _ensure_connected(self) -> None:
        if self.conn is not None:
            return
        if self.pool.healthy() > 0:  # the server is up (another worker is connected): just connect
            self._connect()
            return
        if not self.pool._claim_attempt(background=False):
            raise DatabaseUnavailable(self.pool.unavailable_message())
        try:
            self._connect()
        finally:
            self.pool._attempt_done()

    def _connect(self) -> None:
        try:
            with DRIVER_LIFECYCLE_LOCK:
                conn, interrupt_engine = self.dialect.connect_interruptible(self.pool.connection_string)
        except pyodbc.Error as exc:
            message = clean_message(exc, self.pool.secrets)
            if self.pool._note_failure(message, sqlstate_of(exc), self.dialect.login_refused(exc, message)):
                log.warning("db.connect_failed", worker=self.index, sqlstate=sqlstate_of(exc), error=message)
            raise DatabaseUnavailable(self.pool.unavailable_message()) from None
        try:
            self.dialect.setup_connection(conn)
            canceller = self.pool.watchdog.canceller
            if interrupt_engine is None and canceller is not None:
                interrupt_engine = self._session_cancel(conn, canceller)
        except pyodbc.Error as exc:
            with DRIVER_LIFECYCLE_LOCK, contextlib.suppress(Exception):
                conn.close()
            message = clean_message(exc, self.pool.secrets)
            self.pool._note_failure(message, sqlstate_of(exc), self.dialect.login_refused(exc, message))
            log.warning("db.session_setup_failed", worker=self.index, sqlstate=sqlstate_of(exc), error=message)
            raise DatabaseUnavailable(self.pool.unavailable_message()) from None
        except BaseException:
            with DRIVER_LIFECYCLE_LOCK, contextlib.suppress(Exception):
                conn.close()
            raise
        try:
            self.inline_ok = self.dialect.reads_inline(conn)
        except pyodbc.Error:
            self.inline_ok = False
        with self.lock:
            self.conn, self._interrupt_engine = conn, interrupt_engine
        reconnect = self._had_connection
        self._had_connection = True
        self._last_used = time.monotonic()
        self.pool._note_connected(reconnect)
        log.info("db.connected", worker=self.index, dialect=self.dialect.name, reconnect=reconnect)

    def _session_cancel(self, conn: pyodbc.Connection, canceller: SessionCanceller) -> Callable[[], None]:
        """The canceller bound to this connection's session id (read once, as part of the session's set-up)."""
        assert self.dialect.session_id_sql is not None
        cursor = conn.cursor()
        try:
            session_id = cursor.execute(self.dialect.session_id_sql).fetchval()
        finally:
            cursor.close()
        conn.rollback()
        return functools.partial(canceller.cancel, session_id)

    def _drop_connection(self, cause: BaseException | None, *, log_it: bool = True) -> None:
        with self.lock:
            conn, self.conn, self._interrupt_engine = self.conn, None, None
        self.inline_ok = False
        self.forget_prepared()
        stamp_cursor, self._stamp_cursor = self._stamp_cursor, None
        if stamp_cursor is not None:
            with contextlib.suppress(Exception):
                stamp_cursor.close()
        if conn is None:
            return
        if log_it:
            log.warning(
                "db.connection_dropped",
                worker=self.index,
                sqlstate=sqlstate_of(cause) if cause else None,
                error=clean_message(cause, self.pool.secrets) if cause else None,
            )
        with DRIVER_LIFECYCLE_LOCK, contextlib.suppress(Exception):
            conn.close()


def _close(cursors: list[pyodbc.Cursor]) -> None:
    for cursor in cursors:
        with contextlib.suppress(Exception):
            cursor.close()


class Pool:
    def __init__(self, dialect: Dialect, settings: Any, metrics: Any) -> None:
        self.dialect = dialect
        self.settings = settings
        self.metrics = metrics
        self.size = int(settings.db_pool_size)
        self.wait_seconds = float(settings.db_pool_wait_seconds)
        self.max_waiting = int(getattr(settings, "db_pool_max_waiting", self.size * 25))
        self.secrets = dialect.secrets()
        self.connection_string = ""
        self.watchdog = Watchdog()
        if dialect.cancel_session_sql is not None:
            self.watchdog.canceller = SessionCanceller(self)
        self.last_error: str | None = None
        self.login_refused = False  # the server refused the last login (see _note_failure)
        self._workers: list[Worker] = []
        # Idle workers and the jobs in line, changed by the loop and by worker threads under _hand_off.
        self._idle: list[Worker] = []
        self._pending: deque[_Job[Any]] = deque()
        self._hand_off = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Inline reads: the per-read budget (0: off), and the statements that outran it (until when they go to
        # a thread). The caller (Database._read) has waited for a pass with time left (app.loop_pass).
        self.inline_budget = max(0, int(getattr(settings, "sqlite_inline_read_ms", 0))) / 1000.0
        self._slow: dict[str, float] = {}
        self._struck: dict[str, _Strikes] = {}  # statements that outran it lately
        self._inline_future: asyncio.Future[Any] | None = None
        self._closed = False
        self._started = False
        self._state_lock = threading.Lock()
        self._fail_streak = 0
        self._next_attempt = 0.0
        self._last_attempt = -math.inf
        self._attempt_in_flight = False
        self._first_attempt: asyncio.Future[None] | None = None
        self._exits: dict[int, asyncio.Future[None]] = {}
        dialect_label = dialect.name
        hist = metrics.query_duration
        self._duration = {o: hist.labels(dialect_label, o) for o in ("ok", "error", "timeout", "cancelled")}
        self._timeouts = metrics.query_timeouts.labels(dialect_label)
        self._cancels = metrics.query_cancels.labels(dialect_label)

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self, first_attempt_wait: float = 1.0) -> None:
        """Start the threads; connections open in the background. Never raises because the DB is down."""
        if self._started:
            return
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self.connection_string = self.dialect.connection_string()
        self._first_attempt = loop.create_future()
        self._inline_future = loop.create_future()  # the placeholder future of inline jobs (Pool._run_inline)
        self._workers = [Worker(self, i) for i in range(self.size)]
        self._idle = list(reversed(self._workers))
        self._exits = {w.index: loop.create_future() for w in self._workers}
        self.watchdog.inline_tick = self.inline_budget
        self.watchdog.start(self._workers)
        m = self.metrics
        m.pool_size.set(self.size)
        m.pool_in_use.set_function(lambda: self.size - len(self._idle) if not self._closed else 0)
        m.pool_waiting.set_function(lambda: len(self._pending))
        m.db_up.set_function(lambda: 1.0 if self.healthy() else 0.0)
        for worker in self._workers:
            worker.thread.start()
        # Give the first connection a moment so /health is accurate right after start-up.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._first_attempt), first_attempt_wait)

    async def close(self) -> None:
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        with self._hand_off:
            in_line, self._pending = list(self._pending), deque()
        for queued in in_line:
            if not queued.future.done():
                queued.future.set_exception(DatabaseUnavailable("the database layer is shutting down"))
        for worker in self._workers:
            job = worker.job
            if job is not None:
                self.watchdog.request_cancel(worker, job)
            worker.jobs.put(None)
        pending = [f for f in self._exits.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_GRACE_SECONDS)
        self.watchdog.stop()
        with self._hand_off:
            self._idle.clear()
        # The threads are past their last driver call; wait (without blocking the loop) until they are gone,
        # so a closed pool leaves no threads behind.
        threads = [w.thread for w in self._workers] + [self.watchdog.thread]
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    # --- running jobs ----------------------------------------------------------------------------
    async def run(
        self, fn: Callable[[Worker], T], *, timeout: float, retry: bool = False, inline_key: str | None = None
    ) -> T:
        """Run `fn(session)` on a worker thread within `timeout` seconds; raise DatabaseError subclasses.

        `inline_key` (a read's statement text) allows the read to run on the loop instead, where the
        connection says so (Dialect.reads_inline: SQLite in WAL mode) and SQLITE_INLINE_READ_MS is on."""
        if self._closed or self._loop is None:
            raise DatabaseUnavailable("the database layer is not running")
        limit = timeout
        if inline_key is not None and self.inline_budget > 0.0:
            ran, outcome = self._run_inline(fn, timeout, retry, inline_key)
            if ran:
                return cast(T, outcome)
            timeout = cast(float, outcome)
        job: _Job[T] = _Job(fn, self._loop.create_future(), timeout, retry, limit)
        refused = False
        with self._hand_off:
            worker = self._idle.pop() if self._idle else None
            if worker is not None:
                job.worker = worker
            elif len(self._pending) >= self.max_waiting or self.wait_seconds <= 0:
                refused = True
            else:
                job.queued_at = time.perf_counter()
                self._pending.append(job)
        expiry: asyncio.TimerHandle | None = None
        if worker is not None:
            self.metrics.pool_wait.observe(0.0)
            worker.jobs.put(job)
        elif refused:
            self.metrics.pool_busy_rejections.inc()
            raise DatabaseBusy(BUSY_MESSAGE)
        else:
            expiry = self._loop.call_later(self.wait_seconds, self._expire, job)
        try:
            return await job.future
        except asyncio.CancelledError:
            if job.future.cancelled():  # our caller went away: stop the statement, keep the connection
                with self._hand_off:
                    in_line = _remove(self._pending, job)
                if not in_line and job.worker is not None:
                    job.cancelled = True
                    self.watchdog.request_cancel(job.worker, job)
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    # --- inline reads (on the loop) ----------------------------------------------------------------
    # An engine inside this process (SQLite) does a read as CPU work in this process. On a worker thread,
    # each driver call (execute, every fetch, the rollback) gives the GIL up and takes it back, and with the
    # loop busy each of those is a hand-off between threads: about 15 for SELECT 1, a third of the call's
    # CPU. So a read runs here, on an idle worker's connection, within a short budget (the watchdog cancels
    # it like any time limit). One that outruns it is not lost: it runs again on a worker thread, with the
    # rest of its time limit, and its statement goes straight to a thread for a while.
    def _run_inline(self, fn: Callable[[Worker], T], timeout: float, retry: bool, key: str) -> tuple[bool, Any]:
        """(True, result) when the read ran here; (False, seconds left of its limit) when it must go to a
        thread: its statement is slow, no idle worker may run it here, or it outran the budget."""
        now = time.monotonic()
        slow_until = self._slow.get(key)
        if slow_until is not None:
            if now < slow_until:
                return False, timeout
            del self._slow[key]
        with self._hand_off:
            # The most recently idle connection that can read here (one still connecting cannot).
            worker = next((w for w in reversed(self._idle) if w.inline_ok and w.conn is not None), None)
            if worker is not None:
                self._idle.remove(worker)
        if worker is None:
            return False, timeout  # every connection is busy (or none reads inline): wait in line as usual
        if not worker.session_lock.acquire(blocking=False):
            self._give_back(worker)
            return False, timeout
        budget = min(self.inline_budget, timeout)
        self.watchdog.inline_until = now + INLINE_ACTIVE_SECONDS
        started, cpu_started = time.perf_counter(), time.thread_time()
        error: BaseException | None = None
        moves = False
        try:
            assert self._inline_future is not None
            result = worker._execute(_Job(fn, self._inline_future, budget, retry, timeout))
        except QueryTimeout as exc:
            if budget >= timeout:  # its own time limit, not the budget: it ends here
                error = exc
                raise
            moves = True
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            worker._last_used = time.monotonic()
            worker.session_lock.release()
            self._give_back(worker)
            if not moves:  # a read that moves to a thread is counted there
                self.metrics.pool_wait.observe(0.0)
                self._observe(error, elapsed)
        if moves:
            # Only a statement that computed for much of the budget is slow. One that waited (for the core,
            # or for the GIL while a worker thread ran) is not: demoting it put a 20-row join on threads for
            # a minute at a benchmark's start, where its first calls overlap the first ones moved.
            if time.thread_time() - cpu_started >= budget * INLINE_SLOW_CPU_SHARE:
                self._note_slow(key)
            return False, timeout - elapsed
        strikes = self._struck.get(key)
        if strikes is not None:
            strikes.runs += 1
        return True, result

    def _note_slow(self, key: str) -> None:
        """The statement outran the budget: it goes to a thread for INLINE_SLOW_SECONDS once that happened in
        at least one of INLINE_SLOW_SHARE of its runs since the first time (once can be a cold cache, its
        first run also plans and prepares it, or the machine giving the core to another process)."""
        now = time.monotonic()
        strikes = self._struck.get(key)
        if strikes is None or now - strikes.since >= INLINE_SLOW_SECONDS:
            _remember(self._struck, key, _Strikes(now))
            return
        strikes.runs += 1
        strikes.overruns += 1
        if strikes.overruns * INLINE_SLOW_SHARE >= strikes.runs:
            del self._struck[key]
            _remember(self._slow, key, now + INLINE_SLOW_SECONDS)
            log.debug("db.read_moved_to_thread", budget_ms=round(self.inline_budget * 1000))

    def _give_back(self, worker: Worker) -> None:
        """A worker the loop took for an inline read: it takes the next job in line, or is idle again."""
        next_job = self._next_job(worker)
        if next_job is not None:
            worker.jobs.put(next_job)

    def _expire(self, job: _Job[Any]) -> None:
        """On the loop, `db_pool_wait_seconds` after a job was put in line: if it has not started, refuse it."""
        with self._hand_off:
            in_line = _remove(self._pending, job)
        if in_line and not job.future.done():
            self.metrics.pool_busy_rejections.inc()
            job.future.set_exception(DatabaseBusy(BUSY_MESSAGE))

    # --- called from worker threads ----------------------------------------------------------------
    def _next_job(self, worker: Worker) -> _Job[Any] | None:
        """The job first in line, now this worker's; None (and the worker is idle again) when there is none."""
        with self._hand_off:
            if self._pending:
                job = self._pending.popleft()
                job.worker = worker
            else:
                if not self._closed:
                    self._idle.append(worker)
                return None
        self.metrics.pool_wait.observe(time.perf_counter() - job.queued_at)
        return job

    def _post(self, worker: Worker, job: _Job[Any], result: Any, error: BaseException | None) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is waiting
            loop.call_soon_threadsafe(_complete, job.future, result, error)

    def _observe(self, error: BaseException | None, elapsed: float) -> None:
        if error is None:
            self._duration["ok"].observe(elapsed)
        elif isinstance(error, QueryTimeout):
            self._duration["timeout"].observe(elapsed)
            self._timeouts.inc()
        elif isinstance(error, QueryCancelled):
            self._duration["cancelled"].observe(elapsed)
            self._cancels.inc()
        else:
            self._duration["error"].observe(elapsed)

    def _first_attempt_done(self) -> None:
        future, loop = self._first_attempt, self._loop
        if future is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future)

    def _worker_exited(self, worker: Worker) -> None:
        future, loop = self._exits.get(worker.index), self._loop
        if future is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future)

    def _note_failure(self, message: str, sqlstate: str | None = None, refused: bool = False) -> bool:
        """Record a failed connection attempt; False when it repeats a known login refusal (not worth a log line).

        A refused login (`Dialect.login_refused`: wrong password, unknown or disabled login) will not heal by
        retrying, and retrying every few seconds floods the server's error log and can lock the account: it
        backs off to minutes, calls stop probing, and the change is logged once."""
        with self._state_lock:
            repeat = refused and self.login_refused
            self.last_error = message
            now = time.monotonic()
            if refused and not self.login_refused:
                self._fail_streak = 0  # start the slow schedule from its first step
            self.login_refused = refused
            if now >= self._next_attempt:  # one step of backoff per round, however many workers failed
                self._fail_streak += 1
                first, ceiling = (
                    (LOGIN_REFUSED_BACKOFF_SECONDS, MAX_LOGIN_REFUSED_BACKOFF_SECONDS)
                    if refused
                    else (INITIAL_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS)
                )
                delay = min(ceiling, first * 2 ** (self._fail_streak - 1))
                self._next_attempt = now + delay * random.uniform(0.8, 1.2)
        if refused and not repeat:
            log.error(
                "db.login_refused",
                sqlstate=sqlstate,
                error=message,
                retry_seconds=round(max(0.0, self._next_attempt - time.monotonic())),
                hint="fix the database login settings; run mssql-mcp doctor on this machine",
            )
        return not repeat

    def _note_connected(self, reconnect: bool) -> None:
        with self._state_lock:
            self._fail_streak = 0
            self._next_attempt = 0.0
            self.last_error = None
            self.login_refused = False
        if reconnect:
            self.metrics.pool_reconnects.inc()

    def _claim_attempt(self, *, background: bool) -> bool:
        """While no connection works, one connection attempt at a time, pool-wide.

        Background attempts (idle workers) follow the exponential backoff, so a down server is not
        hammered and a slow login timeout (SQL Server) never ties up the whole pool. A call may probe
        sooner (at most every PROBE_GAP_SECONDS), so the first call after the server is back connects
        at once instead of failing until the backoff runs out; calls arriving meanwhile fail fast.
        """
        with self._state_lock:
            now = time.monotonic()
            if self._attempt_in_flight:
                return False
            if (background or self.login_refused) and now < self._next_attempt:
                return False  # calls probe early, but not against a login the server refuses
            if not background and now < self._last_attempt + PROBE_GAP_SECONDS:
                return False
            self._attempt_in_flight = True
            self._last_attempt = now
            return True

    def _attempt_done(self) -> None:
        with self._state_lock:
            self._attempt_in_flight = False

    def unavailable_message(self) -> str:
        """What a caller is told: never the driver's text, which names the server's host, port and login
        (operators see it in the log and on an authenticated /health)."""
        wait = max(0.0, self._next_attempt - time.monotonic())
        if self.login_refused:
            return (
                f"database unavailable: the database refused the service's login; an operator must fix its "
                f"settings (retrying in {wait:.0f} s)"
            )
        return f"database unavailable, retrying in {wait:.1f} s"

    # --- introspection (event loop, no driver calls) ---------------------------------------------
    def healthy(self) -> int:
        return sum(1 for w in self._workers if w.conn is not None)

    def in_use(self) -> int:
        return 0 if self._closed else self.size - len(self._idle)

    def waiting(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, int]:
        in_use = self.in_use()
        return {
            "size": self.size,
            "in_use": in_use,
            "idle": self.size - in_use,
            "waiting": self.waiting(),
            "healthy": self.healthy(),
        }


def _complete(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Hand a job's outcome to its caller (on the loop's thread; a caller that went away cancelled it)."""
    if not future.done():
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _remember(table: dict[str, V], key: str, value: V) -> None:
    """Set `table[key]`, dropping the oldest entry when the table is full (INLINE_SLOW_MAX)."""
    if len(table) >= INLINE_SLOW_MAX:
        table.pop(next(iter(table)))
    table[key] = value


def _remove(line: deque[_Job[Any]], job: _Job[Any]) -> bool:
    """Take `job` out of the line; False when it is no longer there (a worker took it, or it expired)."""
    try:
        line.remove(job)
    except ValueError:
        return False
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    """Set a waiter's result once (on the loop's thread; it may be done already)."""
    if not future.done():
        future.set_result(None)
