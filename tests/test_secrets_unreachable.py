"""No secret is reachable through the database path.

The signing keys are stored encrypted in DATA_DIR/auth.db under a state key kept outside DATA_DIR, so the
store's files (database, WAL, shared memory) never hold key material in the clear; and a reader who
tries to read files through SQL (the SQLite ODBC driver's blob_import, PostgreSQL's pg_read_file, COPY,
lo_import, ATTACH, identifier escapes, ...) through the real MCP `execute_sql` tool and ChatGPT's
`search`/`fetch` gets nothing that contains the private key (PEM, DER, base64, hex, the raw scalar) or
the state key. The SQLite case is the demo layout (`make run`): the database file and DATA_DIR in the
same directory.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from app.auth.cli import DEMO_PASSWORD_FILE, ensure_demo_user
from app.auth.signing import generate_key
from app.auth.statekey import key_file_path, load_state_key, open_signing_keys
from app.auth.store import AuthStore, store_path
from app.settings import Settings

# -- what must never come back ---------------------------------------------------------------------


def _forms(blob: bytes, window: int) -> set[str]:
    """Hex (both cases), base64 and base64url of `blob` and of every `window`-byte slice of it."""
    out: set[str] = set()
    pieces = [blob] + [blob[i : i + window] for i in range(0, max(1, len(blob) - window + 1), 4)]
    for piece in pieces:
        out.add(piece.hex())
        out.add(piece.hex().upper())
    for encoded in (base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode().rstrip("=")):
        out.update(encoded[i : i + 24] for i in range(0, max(1, len(encoded) - 24 + 1), 8))
    return out


def secret_needles(settings: Settings) -> dict[str, set[str]]:
    """Every form of the private signing key, the state key, and the demo password a response must not hold."""
    state_key = load_state_key(settings)
    with AuthStore(store_path(settings.data_dir)) as store:
        rows = open_signing_keys(store, state_key)
    needles: dict[str, set[str]] = {}
    for row in rows:
        pem = row["private_pem"]
        key = serialization.load_pem_private_key(pem.encode(), None)
        body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
        forms = {body[i : i + 24] for i in range(0, len(body) - 24 + 1, 8)}
        for der in (
            key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            ),
        ):
            forms |= _forms(der, 16)
        forms |= _forms(key.private_numbers().private_value.to_bytes(32, "big"), 12)  # type: ignore[union-attr]
        needles[f"signing key {row['kid']}"] = forms
    secret = settings.state_encryption_key or key_file_path(settings)[0].read_text().strip()
    needles["state key"] = {secret, secret.encode().hex(), secret.encode().hex().upper()} | {
        secret[i : i + 16] for i in range(0, len(secret) - 16 + 1, 4)
    }
    password_file = Path(settings.data_dir) / DEMO_PASSWORD_FILE
    if password_file.exists():
        password = _demo_password(settings)
        needles["demo password"] = {password, password.encode().hex().upper()}
    return needles


def _demo_password(settings: Settings) -> str:
    line = ensure_demo_user(settings)  # reuses the stored password and prints it
    return line.rsplit(" / ", 1)[1]


def leaks(texts: list[tuple[str, str]], needles: dict[str, set[str]]) -> list[str]:
    found = []
    for label, text in texts:
        for secret, forms in needles.items():
            if any(form in text for form in forms):
                found.append(f"{secret} in the answer to {label[:120]!r}")
    return found


# -- the reads a reader tries --------------------------------------------------------------------


def sqlite_corpus(data_dir: Path, key_file: Path, auth_db_size: int) -> list[str]:
    auth = data_dir / "auth.db"
    targets = [
        auth,
        Path(f"{auth}-wal"),
        Path(f"{auth}-shm"),
        key_file,
        data_dir / DEMO_PASSWORD_FILE,
        Path("/proc/self/environ"),
        Path("/proc/self/cmdline"),
    ]
    out: list[str] = []
    for target in targets:
        p = str(target).replace("'", "''")
        out += [
            f"SELECT blob_import('{p}')",
            f"SELECT hex(blob_import('{p}')) AS h",
            f"SELECT quote(blob_import('{p}'))",
            f"SELECT CAST(blob_import('{p}') AS TEXT) AS t",
            f"SELECT readfile('{p}')",
            f"WITH f(b) AS (SELECT blob_import('{p}')) SELECT hex(b) FROM f",
            f"SELECT * FROM (SELECT blob_import('{p}') AS b) AS x",
            f"SELECT \"blob_import\"('{p}')",
            f"SELECT [blob_import]('{p}')",
            f"SELECT BLOB_IMPORT('{p}')",
        ]
    for offset in range(1, max(auth_db_size, 1) + 1, 30_000):  # the whole store, window by window
        for target in (auth, Path(f"{auth}-wal")):
            out.append(f"SELECT hex(substr(blob_import('{target}'), {offset}, 30000))")
    out += [
        f"ATTACH DATABASE '{auth}' AS stolen",
        f"ATTACH DATABASE '{auth}' AS stolen; SELECT private_pem FROM stolen.signing_keys",
        "SELECT * FROM pragma_database_list",
        f"SELECT * FROM fsdir('{data_dir}')",
        "SELECT load_extension('/usr/lib/x86_64-linux-gnu/odbc/libsqlite3odbc.so')",
        f"SELECT edit('{auth}')",
        f"SELECT blob_export(x'00', '{data_dir}/planted')",
    ]
    return out


def postgres_corpus(data_dir: Path, key_file: Path) -> list[str]:
    auth = data_dir / "auth.db"
    out: list[str] = []
    for target in (auth, Path(f"{auth}-wal"), key_file, Path("/proc/self/environ")):
        p = str(target)
        out += [
            f"SELECT pg_read_file('{p}')",
            f"SELECT pg_read_file('{p}', 0, 100000)",
            f"SELECT pg_read_binary_file('{p}')",
            f"SELECT encode(pg_read_binary_file('{p}'), 'hex')",
            f"SELECT convert_from(pg_read_binary_file('{p}'), 'SQL_ASCII')",
            f"SELECT lo_get(lo_import('{p}'))",
            f"SELECT U&\"pg\\005fread\\005ffile\"('{p}')",
            f"SELECT \"pg_read_file\"('{p}')",
            f"SELECT * FROM pg_read_file('{p}') AS t(x)",
            f"SELECT pg_catalog.pg_read_binary_file('{p}', 0, 50000, true)",
        ]
    out += [
        f"COPY (SELECT 1) TO '{data_dir}/planted'",
        f"CREATE TEMP TABLE t(x text); COPY t FROM '{auth}'; SELECT * FROM t",
        f"SELECT * FROM pg_ls_dir('{data_dir}')",
        f"SELECT pg_stat_file('{auth}')",
        "SELECT current_setting('data_directory')",
    ]
    return out


# -- driving the real MCP endpoints as a reader ------------------------------------------------


def _answer_text(result: Any) -> str:
    parts = [getattr(c, "text", "") for c in result.content or []]
    if result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


async def run_as_reader(
    server: Any, settings: Settings, mint: Callable[..., str], statements: list[str], chatgpt_statements: list[str]
) -> list[tuple[str, str]]:
    """(statement, everything that came back) for execute_sql, and for ChatGPT's search then fetch of each id."""
    answers: list[tuple[str, str]] = []
    token = mint(
        settings, server.url, username="reader1", role="reader", scope="mcp:read", resource=server.url + "/mcp"
    )
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(server.url + "/mcp", http_client=http), mode="legacy") as client,
    ):
        for sql in statements:
            answers.append((sql, _answer_text(await client.call_tool("execute_sql", {"query": sql}))))
    token = mint(
        settings, server.url, username="reader1", role="reader", scope="mcp:read", resource=server.url + "/chatgpt/mcp"
    )
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(server.url + "/chatgpt/mcp", http_client=http), mode="legacy") as client,
    ):
        for sql in chatgpt_statements:
            found = await client.call_tool("search", {"query": sql})
            answers.append((f"search {sql}", _answer_text(found)))
            ids = [
                r["id"]
                for r in (found.structured_content or {}).get("results", [])
                if isinstance(r, dict) and "id" in r
            ]
            for record_id in ids[:5]:
                fetched = await client.call_tool("fetch", {"id": record_id})
                answers.append((f"fetch {record_id} of {sql}", _answer_text(fetched)))
    return answers


# -- the store's own files ------------------------------------------------------------------------


def store_files(data_dir: Path) -> Iterator[Path]:
    for path in sorted(data_dir.iterdir()):
        if path.is_file():
            yield path


def test_the_store_files_hold_no_key_material(auth_settings: Callable[..., Settings]) -> None:
    settings = auth_settings()
    with AuthStore(store_path(settings.data_dir)) as store:
        open_signing_keys(store, load_state_key(settings))
        needles = secret_needles(settings)
        raw = {p.name: p.read_bytes() for p in store_files(Path(settings.data_dir))}
    assert "auth.db" in raw
    for name, content in raw.items():
        text = content.decode("latin-1")
        for secret, forms in needles.items():
            assert not any(form in text or form in content.hex() for form in forms), f"{secret} in {name}"
    key_file = key_file_path(settings)[0]
    assert key_file.is_file() and not key_file.resolve().is_relative_to(Path(settings.data_dir).resolve())
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_plain_keys_of_an_older_store_are_encrypted_and_leave_no_copy(auth_settings: Callable[..., Settings]) -> None:
    settings = auth_settings()
    path = store_path(settings.data_dir)
    kid, alg, pem = generate_key()
    with AuthStore(path) as store:  # what version 1 wrote: the PEM in the clear
        store.ensure_signing_key(lambda: (kid, alg, pem))
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    before = b"".join(p.read_bytes() for p in store_files(Path(settings.data_dir)))
    assert body[:40].encode() in before  # the test starts from a store that really holds a plain key
    with AuthStore(path) as store:
        rows = open_signing_keys(store, load_state_key(settings))
        assert [r["kid"] for r in rows] == [kid] and rows[0]["private_pem"] == pem  # the same key, still signing
        stored = store.signing_keys()[0]["private_pem"]
        assert stored.startswith("enc:v1:")
    everything = b"".join(p.read_bytes() for p in store_files(Path(settings.data_dir)))
    assert body[:40].encode() not in everything and body[-40:].encode() not in everything


def test_a_wrong_state_key_stops_start_up_with_one_clear_line(auth_settings: Callable[..., Settings]) -> None:
    from app.auth.statekey import StateKeyError

    settings = auth_settings(state_encryption_key="k" * 40)
    with AuthStore(store_path(settings.data_dir)) as store:
        open_signing_keys(store, load_state_key(settings))
        with pytest.raises(StateKeyError, match="not the key they were stored with"):
            open_signing_keys(store, load_state_key(settings.replace(state_encryption_key="x" * 40)))
    with pytest.raises(StateKeyError, match="at least 32"):
        load_state_key(settings.replace(state_encryption_key="short"))
    inside = Path(settings.data_dir) / "state.key"
    with pytest.raises(StateKeyError, match="inside DATA_DIR"):
        load_state_key(settings.replace(state_encryption_key="", state_encryption_key_file=str(inside)))


def test_a_missing_systemd_credential_is_an_error_not_a_new_key(
    auth_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from app.auth.statekey import StateKeyError

    settings = auth_settings()
    with pytest.raises(StateKeyError, match="LoadCredential"):
        load_state_key(settings, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "state_encryption_key").write_text("c" * 44 + "\n")
    assert load_state_key(settings, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}).source.endswith(
        "state_encryption_key"
    )


# -- through the database path ---------------------------------------------------------------------


@pytest.fixture
def demo_layout(demo_db_path: Path, tmp_path: Path) -> Path:
    """`make run`'s layout: the demo database and DATA_DIR are one directory."""
    directory = tmp_path / "var"
    directory.mkdir()
    shutil.copyfile(demo_db_path, directory / "demo.db")
    return directory


async def test_sqlite_reader_cannot_read_any_key(
    demo_layout: Path, auth_settings: Callable[..., Settings], start_live_server: Any, mint_access_token: Any
) -> None:
    settings = auth_settings(sqlite_path=str(demo_layout / "demo.db"), data_dir=str(demo_layout))
    ensure_demo_user(settings)
    server = await start_live_server(settings)
    needles = secret_needles(settings)
    statements = sqlite_corpus(demo_layout, key_file_path(settings)[0], (demo_layout / "auth.db").stat().st_size)
    chatgpt = [s for s in statements if "substr" not in s][:40]
    answers = await run_as_reader(server, settings, mint_access_token, statements, chatgpt)
    assert len(answers) >= len(statements) + len(chatgpt)
    found = leaks(answers, needles)
    assert not found, "\n".join(found[:20])
    assert not (demo_layout / "planted").exists()


@pytest.fixture
def pg_readable_parent() -> Iterator[Path]:
    """A parent directory the PostgreSQL server's OS user may enter, so only the store's own file modes
    (0700 directory, 0600 files) stand between pg_read_file and DATA_DIR."""
    parent = Path(tempfile.mkdtemp(prefix="mssql-mcp-pg-"))
    os.chmod(parent, 0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


async def test_postgres_reader_cannot_read_any_key(
    pg_db: dict[str, Any],
    pg_readable_parent: Path,
    auth_settings: Callable[..., Settings],
    start_live_server: Any,
    mint_access_token: Any,
) -> None:
    data_dir = pg_readable_parent / "state"
    key_file = pg_readable_parent / "state.key"
    settings = auth_settings(**pg_db, data_dir=str(data_dir), state_encryption_key_file=str(key_file))
    server = await start_live_server(settings)
    needles = secret_needles(settings)
    assert oct(data_dir.stat().st_mode & 0o777) == "0o700"
    statements = postgres_corpus(data_dir, key_file)
    answers = await run_as_reader(server, settings, mint_access_token, statements, statements[:20])
    found = leaks(answers, needles)
    assert not found, "\n".join(found[:20])
    assert not (data_dir / "planted").exists()


def test_the_leak_check_finds_every_form_it_looks_for(auth_settings: Callable[..., Settings]) -> None:
    """A control: the needles do match key material when it is there (hex, base64, PEM lines, the scalar)."""
    settings = auth_settings()
    with AuthStore(store_path(settings.data_dir)) as store:
        pem = open_signing_keys(store, load_state_key(settings))[0]["private_pem"]
    needles = secret_needles(settings)
    key = serialization.load_pem_private_key(pem.encode(), None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    for text in (
        pem,
        "0x" + der.hex().upper(),
        der[20:60].hex(),
        base64.b64encode(der).decode(),
        scalar.hex(),
        base64.urlsafe_b64encode(scalar).decode().rstrip("="),
        key_file_path(settings)[0].read_text(),
    ):
        assert leaks([("control", text)], needles), text[:40]


async def test_even_a_file_read_that_slips_past_the_guard_finds_only_ciphertext(
    demo_layout: Path, auth_settings: Callable[..., Settings], start_live_server: Any
) -> None:
    """Defence in depth: blob_import run directly on the SQLite ODBC driver (no guard at all) while the
    service runs (so the WAL is live) reads the store's files and gets no key material from them."""
    import pyodbc

    settings = auth_settings(sqlite_path=str(demo_layout / "demo.db"), data_dir=str(demo_layout))
    await start_live_server(settings)
    needles = {k: v for k, v in secret_needles(settings).items() if k.startswith("signing key")}
    conn = pyodbc.connect(f"DRIVER={{SQLite3}};Database={demo_layout / 'demo.db'}", autocommit=True, timeout=5)
    try:
        answers = []
        for name in ("auth.db", "auth.db-wal", "auth.db-shm"):
            path = demo_layout / name
            if path.exists():
                value = conn.cursor().execute("SELECT blob_import(?)", str(path)).fetchone()[0]
                assert value, f"blob_import read nothing from {name}"  # the hole is real without the guard
                answers.append((name, bytes(value).decode("latin-1") + bytes(value).hex() + bytes(value).hex().upper()))
    finally:
        conn.close()
    assert answers
    found = leaks(answers, needles)
    assert not found, found


def test_processes_starting_together_generate_one_key(auth_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = auth_settings(state_encryption_key_file=str(tmp_path / "keys" / "state.key"))
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_state_key(settings), range(8)))
    sealed = keys[0].encrypt("kid", "secret")
    assert all(k.decrypt("kid", sealed) == "secret" for k in keys)
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["state.key"]  # no partial files left
