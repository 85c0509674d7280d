"""WORKERS>1: one supervisor process and N forked server processes on one port.

The supervisor binds the listening socket (and METRICS_PORT's) itself and forks the workers, which inherit
them: the kernel hands each new connection to whichever worker accepts first, and a worker that stops or dies
never takes the socket or its queue of waiting connections with it (with SO_REUSEPORT each worker would have
its own queue, and connections waiting in a stopping worker's queue are reset). The supervisor runs no event
loop and no thread; it only forks, waits and signals:

- a worker that dies is restarted at once, with a log line; one that keeps dying within STABLE_SECONDS of
  starting is restarted after a growing delay (0.5 s doubling to 30 s) so a crash at start-up cannot spin the
  CPU; its own line on stderr says why it failed;
- SIGTERM / SIGINT: every worker shuts down gracefully (aiohttp lets in-flight requests finish for up to
  SHUTDOWN_TIMEOUT_SECONDS), then the supervisor exits 0;
- SIGHUP: a rolling restart, one worker at a time: the new one is serving before the old one is asked to
  stop, so the port never lacks a worker. Each new worker builds its app afresh, so this is also how
  ACCESS_POLICY_FILE is re-read; a new worker that cannot start (say, an invalid policy file) stops the
  roll and the running workers keep serving with what they had.

Metrics: the workers write prometheus_client's multiprocess files in a private directory, and whichever
worker answers a scrape of METRICS_PORT reports the whole service (see app.obs.metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import resource
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import hdrs, web

from .settings import Settings

# aiohttp's default: how long a stopping worker lets in-flight requests (and open streams) finish.
SHUTDOWN_TIMEOUT_SECONDS = 60.0
# After SIGTERM a worker answers on its open connections with `Connection: close` this long before closing them.
DRAIN_SECONDS = 1.0
# A worker that lived less than this after starting counts as crashing at start-up: back off.
STABLE_SECONDS = 5.0
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# Exit code of a worker whose settings or ACCESS_POLICY_FILE are invalid (main's "configuration error").
CONFIGURATION_ERROR = 2
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def bind_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket like aiohttp's TCPSite would open (SO_REUSEADDR; '::' accepts IPv4 too)."""
    first = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    family, address = first[0], first[4]
    dualstack = family == socket.AF_INET6 and host == "::" and socket.has_dualstack_ipv6()
    return socket.create_server(address[:2], family=family, backlog=backlog, dualstack_ipv6=dualstack)


# The kernel grows a process's file-descriptor table by doubling it, and where threads share the table (the
# database pool's) each growth waits for an RCU grace period with the caller in uninterruptible sleep: 7-25 ms
# inside accept4 or openat on the event loop (seen in the loop thread's kernel stack), the first time a
# worker's descriptors passed 64, 128, ... Grown once while the process has one thread, it waits for nothing.
FD_TABLE_RESERVE = 4096


def fd_table_slots() -> int:
    """How many descriptor slots reserve_fd_table grows the table to: FD_TABLE_RESERVE, or fewer where the
    open-files limit is lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FD_TABLE_RESERVE if soft == resource.RLIM_INFINITY else min(FD_TABLE_RESERVE, soft)


def reserve_fd_table() -> None:
    """Grow this process's descriptor table to fd_table_slots() now: call it before any thread starts. Costs 8
    bytes a slot; the descriptors themselves stay free. F_DUPFD takes the lowest free slot from the top one
    up, so a descriptor the process inherited there is left open (dup2 would have closed it)."""
    top = fd_table_slots() - 1
    if top < 3:
        return
    with contextlib.suppress(OSError):
        spare = os.open(os.devnull, os.O_RDONLY)
        try:
            os.close(fcntl.fcntl(spare, fcntl.F_DUPFD_CLOEXEC, top))
        finally:
            os.close(spare)


METRICS_DIR_PREFIX = "mssql-mcp-metrics-"
# prometheus_client writes every observation into its files' mmap'ed pages: in memory, they never wait for a
# disk. (The loop blocks first blamed on these files were most likely the descriptor-table growth above: the
# files are opened with openat, one of the two calls seen in the loop thread's kernel stack.)
SHARED_MEMORY_DIR = "/dev/shm"


def metrics_root() -> str:
    """Where the workers' metrics directory goes: the memory-backed /dev/shm where it is writable (Linux,
    also under systemd's ProtectSystem=strict), else the temporary directory."""
    if os.path.isdir(SHARED_MEMORY_DIR) and os.access(SHARED_MEMORY_DIR, os.W_OK | os.X_OK):
        return SHARED_MEMORY_DIR
    return tempfile.gettempdir()


def _remove_stale_metrics_dirs() -> None:
    """Directories left by supervisors that were killed (SIGKILL cannot clean up): named after their pid."""
    root = metrics_root()
    for entry in os.scandir(root):
        pid = entry.name.removeprefix(METRICS_DIR_PREFIX).partition("-")[0]
        if entry.name.startswith(METRICS_DIR_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(entry.path, ignore_errors=True)


def use_multiprocess_metrics() -> str:
    """Point prometheus_client at a fresh private directory, before any metric exists (the workers inherit it)."""
    if os.path.isdir("/proc"):
        _remove_stale_metrics_dirs()
    directory = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-", dir=metrics_root())
    os.environ[MULTIPROC_ENV] = directory
    from prometheus_client import values

    # prometheus_client picks its value class when first imported; pick again in case that already happened.
    values.ValueClass = values.get_value_class()
    return directory


@dataclass
class Worker:
    slot: int  # 1..WORKERS: a stable name for logs; the pid changes with every restart
    pid: int
    ready_fd: int  # read end of the pipe the worker writes one byte to once it is serving
    started: float
    ready: bool = False
    retiring: bool = False  # asked to stop (rolling restart or shutdown): its exit is expected


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGTERM to a worker whose supervisor died (no orphans serving on)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        listener: socket.socket,
        metrics_listener: socket.socket | None,
        banner: str,
        run_worker: Callable[[Settings, socket.socket, socket.socket | None, Callable[[], None]], int],
        metrics_dir: str,
    ) -> None:
        self.settings = settings
        self.listener = listener
        self.metrics_listener = metrics_listener
        self.banner = banner
        self.run_worker = run_worker
        self.metrics_dir = metrics_dir
        self.log = structlog.get_logger("workers")
        self.workers: dict[int, Worker] = {}  # by pid
        self.failures: dict[int, int] = {}  # slot -> consecutive start-up crashes
        self.restart_at: dict[int, float] = {}  # slot -> monotonic time of its delayed restart
        self.roll_queue: list[int] = []
        self.rolling: tuple[Worker, Worker] | None = None  # (old, new) of the slot being rolled
        self.roll_was_running = False
        self.serving = False  # every first worker has been ready once (banner printed)
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.selector = selectors.DefaultSelector()
        self.wakeup_fds: tuple[int, ...] = ()

    # --- process handling ----------------------------------------------------------------------------
    def spawn(self, slot: int) -> Worker:
        ready_read, ready_write = os.pipe()
        # Signals wait until each side has its own handlers: a SIGTERM for a worker that still had the
        # supervisor's handler would reach the supervisor's wake-up fd and stop the whole service.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_read)
                code = self._worker_process(ready_write)
            except BaseException as exc:  # a worker must never return into the supervisor's code
                print(f"worker {slot} stopped by an error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                self.log.debug("worker_error", worker=slot, exc_info=True)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        os.close(ready_write)
        worker = Worker(slot=slot, pid=pid, ready_fd=ready_read, started=time.monotonic())
        self.workers[pid] = worker
        self.selector.register(ready_read, selectors.EVENT_READ, worker)
        self.log.info("worker_started", worker=slot, pid=pid)
        return worker

    def _worker_process(self, ready_write: int) -> int:
        signal.set_wakeup_fd(-1)
        self.selector.close()
        for fd in [*self.wakeup_fds, *(w.ready_fd for w in self.workers.values() if w.ready_fd >= 0)]:
            os.close(fd)  # the supervisor's, not ours
        for signum in _HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # SIGHUP belongs to the supervisor (a rolling restart); one sent to the whole group must not kill us.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        _die_with_parent()
        if os.getppid() == 1:  # the supervisor died between fork and prctl
            return 0
        reserve_fd_table()  # a forked child has one thread, and a table only as large as its open descriptors

        def ready() -> None:
            os.write(ready_write, b"1")
            os.close(ready_write)

        return self.run_worker(self.settings, self.listener, self.metrics_listener, ready)

    def signal_worker(self, worker: Worker, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signum)

    def retire(self, worker: Worker) -> None:
        worker.retiring = True
        self.signal_worker(worker, signal.SIGTERM)

    def _close_ready_pipe(self, worker: Worker) -> None:
        if worker.ready_fd >= 0:
            self.selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    def on_ready_pipe(self, worker: Worker) -> None:
        data = os.read(worker.ready_fd, 16)
        self._close_ready_pipe(worker)  # one byte when ready, or EOF when the worker died first
        if not data:
            return
        worker.ready = True
        self.log.info("worker_ready", worker=worker.slot, pid=worker.pid)
        if self.rolling and self.rolling[1] is worker:
            self.retire(self.rolling[0])
        if not self.serving and len([w for w in self.workers.values() if w.ready]) >= self.settings.workers:
            self.serving = True
            print(self.banner, flush=True)
            self.log.info("workers_serving", workers=self.settings.workers, pids=sorted(self.workers))

    def reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._close_ready_pipe(worker)
            with contextlib.suppress(OSError):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid, self.metrics_dir)  # its live gauges leave the scrape
            self.on_exit(worker, status)

    def on_exit(self, worker: Worker, status: int) -> None:
        reason = _exit_reason(status)
        if worker.retiring or self.stopping:
            self.log.info("worker_stopped", worker=worker.slot, pid=worker.pid, status=reason)
            if self.rolling and self.rolling[0] is worker:
                self.rolling = None
            return
        if self.rolling and self.rolling[0] is worker:
            # The worker being replaced died first: its replacement is already on the way.
            self.log.warning("worker_died", worker=worker.slot, pid=worker.pid, status=reason, restart_in_seconds=0.0)
            self.rolling = None
            return
        if self.rolling and self.rolling[1] is worker:
            # The replacement could not start: keep the running workers (and what they loaded) and stop the roll.
            self.log.error(
                "rolling_restart_stopped",
                worker=worker.slot,
                pid=worker.pid,
                status=reason,
                detail="the new worker did not start (its reason is on stderr); the running workers keep serving",
            )
            self.rolling = None
            self.roll_queue.clear()
            return
        if (
            not self.serving
            and not worker.ready
            and os.WIFEXITED(status)
            and os.WEXITSTATUS(status) == CONFIGURATION_ERROR
        ):
            # A configuration error at the first start will not fix itself: exit as WORKERS=1 would.
            self.exit_code = CONFIGURATION_ERROR
            self.stop()
            return
        lived = time.monotonic() - worker.started
        failures = self.failures.get(worker.slot, 0) + 1 if lived < STABLE_SECONDS else 0
        self.failures[worker.slot] = failures
        # The first death is restarted at once; only a worker that keeps dying young waits, longer each time.
        delay = 0.0 if failures <= 1 else min(BACKOFF_FIRST_SECONDS * 2 ** (failures - 2), BACKOFF_MAX_SECONDS)
        self.log.warning("worker_died", worker=worker.slot, pid=worker.pid, status=reason, restart_in_seconds=delay)
        self.restart_at[worker.slot] = time.monotonic() + delay

    # --- commands ------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.log.info("workers_stopping", pids=sorted(self.workers))
        self.stop_deadline = time.monotonic() + SHUTDOWN_TIMEOUT_SECONDS + 5.0
        self.restart_at.clear()
        self.roll_queue.clear()
        for worker in list(self.workers.values()):
            self.signal_worker(worker, signal.SIGTERM)

    def begin_rolling_restart(self) -> None:
        if self.stopping:
            return
        if self.rolling or self.roll_queue:
            self.log.info("rolling_restart_already_running")
            return
        self.log.info("rolling_restart_started", workers=len(self.workers))
        self.roll_queue = sorted({w.slot for w in self.workers.values() if not w.retiring})

    def _advance_roll(self) -> None:
        while self.rolling is None and self.roll_queue:
            slot = self.roll_queue.pop(0)
            old = next((w for w in self.workers.values() if w.slot == slot and not w.retiring), None)
            if old is None:  # that slot is waiting for a restart anyway: it will start with fresh state
                continue
            self.rolling = (old, self.spawn(slot))
            return
        if self.rolling is None and not self.roll_queue and self.roll_was_running:
            self.log.info("rolling_restart_done", pids=sorted(self.workers))
        self.roll_was_running = self.rolling is not None or bool(self.roll_queue)

    # --- main loop -----------------------------------------------------------------------------------
    def run(self) -> int:
        wakeup_read, wakeup_write = socket.socketpair()
        wakeup_read.setblocking(False)
        wakeup_write.setblocking(False)
        for signum in _HANDLED_SIGNALS:
            signal.signal(signum, lambda *_: None)  # the wake-up fd carries the signal number to the loop
        previous_wakeup = signal.set_wakeup_fd(wakeup_write.fileno(), warn_on_full_buffer=False)
        self.wakeup_fds = (wakeup_read.fileno(), wakeup_write.fileno())
        self.selector.register(wakeup_read, selectors.EVENT_READ, None)
        try:
            for slot in range(1, self.settings.workers + 1):
                self.spawn(slot)
            while self.workers or not self.stopping:
                self._step(wakeup_read)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum in _HANDLED_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            for worker in list(self.workers.values()):  # only after an error in the loop itself
                self.signal_worker(worker, signal.SIGKILL)
            self.selector.close()
            wakeup_read.close()
            wakeup_write.close()
            self.listener.close()
            if self.metrics_listener is not None:
                self.metrics_listener.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self.exit_code == 0:
            self.log.info("workers_stopped")
        return self.exit_code

    def _step(self, wakeup: socket.socket) -> None:
        now = time.monotonic()
        timeouts = [1.0, *(at - now for at in self.restart_at.values())]
        if self.stopping:
            timeouts.append(self.stop_deadline - now)
        for key, _ in self.selector.select(max(0.0, min(timeouts))):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    for signum in wakeup.recv(64):
                        self._on_signal(signum)
            else:
                self.on_ready_pipe(key.data)
        self.reap()
        now = time.monotonic()
        for slot, at in list(self.restart_at.items()):
            if at <= now and not self.stopping:
                del self.restart_at[slot]
                self.spawn(slot)
        if self.stopping and self.workers and now >= self.stop_deadline:
            self.log.error(
                "workers_killed", detail="still running after the shutdown timeout", pids=sorted(self.workers)
            )
            for worker in self.workers.values():
                self.signal_worker(worker, signal.SIGKILL)
            self.stop_deadline = now + 5.0
        self._advance_roll()

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop()
        elif signum == signal.SIGHUP:
            self.begin_rolling_restart()
        # SIGCHLD: reap() runs after every wake-up anyway


async def _serve_until_stopped(app: web.Application, listener: socket.socket, ready: Callable[[], None]) -> None:
    """run_app's work for a worker, with a drain before aiohttp's graceful shutdown.

    On SIGTERM/SIGINT the worker first stops accepting (the other workers take the new connections from the
    shared socket), then for DRAIN_SECONDS keeps answering on its open connections with `Connection: close`,
    so keep-alive clients move to another worker between two requests instead of having an idle connection
    closed under a request they are sending. Then aiohttp's shutdown: idle connections closed, in-flight
    requests given up to SHUTDOWN_TIMEOUT_SECONDS.
    """
    draining = False

    async def close_after_answer(request: web.BaseRequest, response: web.StreamResponse) -> None:
        if draining:
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    app.on_response_prepare.append(close_after_answer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    try:
        site = web.SockSite(runner, listener)
        await site.start()
        ready()
        await stop.wait()
        await site.stop()
        draining = True
        await asyncio.sleep(DRAIN_SECONDS)
    finally:
        await runner.cleanup()


def run_worker_app(
    app: web.Application, listener: socket.socket, loop: asyncio.AbstractEventLoop, ready: Callable[[], None]
) -> None:
    """Serve `app` on the inherited listener until SIGTERM/SIGINT, then drain and stop (as run_app would)."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve_until_stopped(app, listener, ready))
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def serve_workers(
    settings: Settings,
    banner: str,
    run_worker: Callable[[Settings, socket.socket, socket.socket | None, Callable[[], None]], int],
) -> int:
    """Bind, fork WORKERS workers and supervise them until SIGTERM/SIGINT. The binding errors are the caller's."""
    metrics_dir = use_multiprocess_metrics()
    try:
        listener = bind_listener(settings.host, settings.port)
        metrics_listener = None
        if settings.metrics_port:
            try:
                metrics_listener = bind_listener(settings.metrics_host, settings.metrics_port)
            except OSError as exc:
                # As with one process: losing metrics must not take the service down, but say so loudly.
                structlog.get_logger("app.obs").error(
                    "metrics_listener_failed", host=settings.metrics_host, port=settings.metrics_port, error=str(exc)
                )
    except BaseException:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        raise
    # Imported once here so every fork starts with the code loaded (faster restarts, pages shared).
    from . import web  # noqa: F401

    return Supervisor(settings, listener, metrics_listener, banner, run_worker, metrics_dir).run()
