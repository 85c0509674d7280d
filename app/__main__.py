"""Command line: `mssql-mcp serve | demo | users | keys | settings | doctor`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .policy import PolicyError
from .settings import SETTINGS, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from aiohttp.web import Application as web_Application

DEFAULT_DEMO_DB = Path("var/demo.db")


def _new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """uvloop unless EVENT_LOOP=asyncio: the same protocol work costs the loop less time per call."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _serve(settings: Settings, banner: str | None = None) -> int:
    from aiohttp import web

    from .obs.logging import configure_logging
    from .web import create_app

    configure_logging(settings)
    shown_host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    text = banner or f"MSSQL MCP Server listening on http://{shown_host}:{settings.port}"
    if settings.workers > 1:
        from .workers import serve_workers

        # The supervisor binds the port, forks the workers and prints the banner once all of them serve.
        return _cannot_listen_is_one_line(settings, lambda: serve_workers(settings, text, _run_worker))
    from .workers import reserve_fd_table

    reserve_fd_table()  # before the pool's threads exist (see there)
    app = create_app(settings)  # an invalid ACCESS_POLICY_FILE raises PolicyError here: main prints its line
    app.on_startup.append(_reload_policy_on_sighup)

    def run() -> int:
        # run_app calls `print` once its listeners are bound, so the banner never announces a port we lack.
        web.run_app(
            app,
            loop=_new_event_loop(settings),
            host=settings.host,
            port=settings.port,
            print=lambda _: print(text, flush=True),
            access_log=None,
            handle_signals=True,
        )
        return 0

    return _cannot_listen_is_one_line(settings, run)


def _cannot_listen_is_one_line(settings: Settings, serve: Callable[[], int]) -> int:
    try:
        return serve()
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        print(
            f"cannot listen on {settings.host}:{settings.port}: {os.strerror(exc.errno or 0).lower()} "
            "(is another server using it? set HOST and PORT)",
            file=sys.stderr,
        )
        return 1


def _run_worker(
    settings: Settings, listener: socket.socket, metrics_listener: socket.socket | None, ready: Callable[[], None]
) -> int:
    """One of WORKERS processes (forked by app.workers): its own app and database pool on the inherited socket."""
    from .obs import METRICS_SOCKET
    from .web import create_app
    from .workers import run_worker_app

    if metrics_listener is None:  # METRICS_PORT is 0, or the supervisor could not bind it (and said so)
        settings = settings.replace(metrics_port=0)
    try:
        app = create_app(settings)
    except (SettingsError, PolicyError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    if metrics_listener is not None:
        app[METRICS_SOCKET] = metrics_listener
    # SIGTERM/SIGINT: drain, then a graceful stop; SIGHUP is the supervisor's (a rolling restart).
    run_worker_app(app, listener, _new_event_loop(settings), ready)
    return 0


async def _reload_policy_on_sighup(app: web_Application) -> None:
    """SIGHUP re-reads ACCESS_POLICY_FILE; an invalid new file keeps the policy in force (one warning line)."""
    import asyncio

    from . import keys

    if hasattr(signal, "SIGHUP"):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app[keys.DATABASE].reload_policy)


# Errors binding a listener: the operator's to fix, so one line instead of a traceback.
_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _demo(args: argparse.Namespace) -> int:
    from .auth.cli import ensure_demo_user
    from .demo import build_demo_database

    db_path = Path(args.database).resolve()
    created = build_demo_database(db_path)
    settings = load_settings(
        env_file=None,
        environ={k: v for k, v in os.environ.items() if k in {"PORT", "METRICS_PORT", "LOG_LEVEL", "LOG_FORMAT"}},
        db_backend="sqlite",
        sqlite_path=str(db_path),
        host="127.0.0.1",
        metrics_host="127.0.0.1",
        data_dir=str(db_path.parent),
    )
    login = ensure_demo_user(settings)
    lines = [
        f"Demo database: {db_path} ({'built' if created else 'reused'})",
        f"MSSQL MCP Server (demo) on http://127.0.0.1:{settings.port}",
        f"  Claude:  http://127.0.0.1:{settings.port}/mcp   ChatGPT: http://127.0.0.1:{settings.port}/chatgpt/mcp",
        f"  Metrics: http://127.0.0.1:{settings.metrics_port}/metrics" if settings.metrics_port else "",
        login,
    ]
    return _serve(settings, banner="\n".join(line for line in lines if line))


def _print_settings(markdown: bool) -> int:
    """The settings table, as a .env template or as the Markdown table in README.md."""
    group = None
    for setting in SETTINGS:
        default = ",".join(setting.default) if isinstance(setting.default, tuple) else setting.default
        default = str(default).lower() if isinstance(default, bool) else default
        if markdown:
            if setting.group != group:
                group = setting.group
                print(f"\n**{group.capitalize()}**\n\n| Variable | Default | Meaning |\n|---|---|---|")
            aliases = f" (also `{'`, `'.join(setting.env[1:])}`)" if len(setting.env) > 1 else ""
            shown = f"`{default}`" if default != "" else "(empty)"
            print(f"| `{setting.env[0]}`{aliases} | {shown} | {setting.help} |")
        else:
            print(f"# {setting.help}\n{setting.env[0]}={default}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mssql-mcp", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the configured database (default)")
    demo = sub.add_parser("demo", help="build the embedded SQLite demo database and serve it on 127.0.0.1")
    demo.add_argument("--database", default=str(DEFAULT_DEMO_DB))
    users = sub.add_parser("users", help="manage sign-in users: add, remove, list, passwd")
    users.add_argument("users_args", nargs=argparse.REMAINDER)
    keys_cmd = sub.add_parser("keys", help="token signing keys: list, rotate (see `mssql-mcp keys --help`)")
    keys_cmd.add_argument("keys_args", nargs=argparse.REMAINDER)
    settings_cmd = sub.add_parser("settings", help="print every setting with its default and meaning")
    settings_cmd.add_argument("--markdown", action="store_true", help="as the Markdown table in README.md")
    doctor = sub.add_parser(
        "doctor",
        help="check the configured database from this machine: connection, TLS, "
        "permissions, catalog, types, time limits (exit 1 when a check fails)",
    )
    doctor.add_argument("--json", action="store_true", help="the report as JSON (keys: name, status, detail, hint)")
    doctor.add_argument("--strict", action="store_true", help="warnings fail too")
    argv = sys.argv[1:] if argv is None else argv
    # `keys` has its own parser, so `mssql-mcp keys --help` shows the keys commands.
    keys_call = argparse.Namespace(command="keys", keys_args=argv[1:]) if argv[:1] == ["keys"] else None
    args = keys_call or parser.parse_args(argv)

    if args.command in (None, "serve", "demo"):
        from .db.dialects.sqlite import skip_memory_statistics

        skip_memory_statistics()  # before anything imports sqlite3 (the auth store, the demo builder)
    try:
        if args.command == "settings":
            return _print_settings(args.markdown)
        if args.command == "demo":
            return _demo(args)
        if args.command == "doctor":
            from .doctor import doctor_main

            return doctor_main(json_output=args.json, strict=args.strict)
        if args.command == "users":
            from .auth.cli import users_main

            # User management needs only DATA_DIR, not a configured database.
            return users_main(load_settings(require_database=False), args.users_args)
        if args.command == "keys":
            from .auth.keys_cli import keys_main

            return keys_main(load_settings(require_database=False), args.keys_args)
        return _serve(load_settings())
    except (SettingsError, PolicyError) as exc:  # PolicyError: an invalid ACCESS_POLICY_FILE, one line
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
