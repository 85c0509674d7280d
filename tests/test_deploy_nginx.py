"""The nginx site (nginx/mssql-mcp.conf.j2) rendered as the Ansible role renders it, run by the real nginx
on loopback in front of a small upstream, and checked from a client's side.

Fast (about a second): no container, no Ansible. The Molecule scenarios run the same template inside a
booted Debian with the real app; these tests pin the proxy's own behaviour.
"""

from __future__ import annotations

import getpass
import http.client
import importlib.util
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "nginx" / "mssql-mcp.conf.j2"
STUB = ROOT / "ansible" / "molecule" / "shared" / "files" / "upstream_stub.py"
ROLE_DEFAULTS = ROOT / "ansible" / "roles" / "nginx" / "defaults" / "main.yml"
NAME = "mcp.test"

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (make system-deps)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _role_defaults() -> dict[str, Any]:
    """The nginx role's defaults: the test renders what a deployment renders unless it overrides."""
    return yaml.safe_load(ROLE_DEFAULTS.read_text())


@dataclass
class Site:
    http_port: int
    https_port: int
    cafile: Path
    webroot: Path
    prefix: str

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        host: str = NAME,
        tls: bool = True,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self.connect(host=host, tls=tls)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def connect(
        self, *, host: str = NAME, tls: bool = True, context: ssl.SSLContext | None = None
    ) -> http.client.HTTPConnection:
        """A connection to 127.0.0.1 that says `host` in SNI and Host, as a client that resolved the name."""
        if not tls:
            return _LoopbackHTTP(host, self.http_port, timeout=5)
        return _LoopbackHTTPS(
            host, self.https_port, timeout=5, context=context or ssl.create_default_context(cafile=str(self.cafile))
        )


class _LoopbackHTTP(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)


class _LoopbackHTTPS(http.client.HTTPSConnection):
    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """The stand-in app the Molecule nginx scenario uses: /health, a slow SSE stream, and an echo."""
    spec = importlib.util.spec_from_file_location("upstream_stub", STUB)
    assert spec and spec.loader
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    server = ThreadingHTTPServer(("127.0.0.1", 0), stub.Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def _start_site(tmp: Path, upstream_port: int, **overrides: Any) -> tuple[Site, subprocess.Popen[bytes]]:
    for sub in ("logs", "tmp", "webroot/.well-known/acme-challenge"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    cert, key = tmp / "fullchain.pem", tmp / "privkey.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={NAME}",
            "-addext",
            f"subjectAltName=DNS:{NAME}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    variables = {
        **_role_defaults(),
        "nginx_server_names": [NAME],
        "nginx_http_port": _free_port(),
        "nginx_https_port": _free_port(),
        "nginx_listen_ipv6": False,
        "nginx_upstream": f"127.0.0.1:{upstream_port}",
        "nginx_tls_certificate": str(cert),
        "nginx_tls_certificate_key": str(key),
        "nginx_acme_webroot": str(tmp / "webroot"),
        "nginx_log_dir": str(tmp / "logs"),
        "nginx_auth_rate_limit": "1r/s",
        "nginx_auth_rate_limit_burst": 3,
        **overrides,
    }
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    site = env.from_string(TEMPLATE.read_text()).render(**variables)
    (tmp / "site.conf").write_text(site)
    # The parts of Debian's nginx.conf the site relies on, with every path inside tmp; workers run as us
    # (pytest's tmp is private to this user).
    (tmp / "nginx.conf").write_text(f"""
user {getpass.getuser()};
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {tmp}/tmp/body;
    proxy_temp_path {tmp}/tmp/proxy;
    fastcgi_temp_path {tmp}/tmp/fastcgi;
    uwsgi_temp_path {tmp}/tmp/uwsgi;
    scgi_temp_path {tmp}/tmp/scgi;
    include {tmp}/site.conf;
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    base = [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf")]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    https_port = variables["nginx_https_port"]
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", https_port), 0.2).close()
            break
        except OSError:
            assert proc.poll() is None, (tmp / "logs" / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)
    return Site(
        variables["nginx_http_port"], https_port, cert, tmp / "webroot", variables.get("nginx_location_prefix", "")
    ), proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def site(upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    started, proc = _start_site(tmp_path_factory.mktemp("nginx"), upstream)
    yield started
    _stop(proc)


@pytest.fixture(scope="module")
def prefixed_site(upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    started, proc = _start_site(tmp_path_factory.mktemp("nginx-prefix"), upstream, nginx_location_prefix="/prod")
    yield started
    _stop(proc)


def test_health_goes_through_tls_with_security_headers(site: Site) -> None:
    status, headers, body = site.request("GET", "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Server"] == "nginx"  # no version


def test_plain_http_redirects_to_the_same_url_over_https(site: Site) -> None:
    status, headers, _ = site.request("GET", "/mcp?x=1", tls=False)
    assert status == 301
    assert headers["Location"] == f"https://{NAME}:{site.https_port}/mcp?x=1"


def test_acme_challenges_are_answered_over_plain_http_from_the_webroot(site: Site) -> None:
    (site.webroot / ".well-known" / "acme-challenge" / "token123").write_text("token123.thumbprint")
    status, _, body = site.request("GET", "/.well-known/acme-challenge/token123", tls=False)
    assert (status, body) == (200, b"token123.thumbprint")


def test_sse_events_arrive_while_the_stream_is_open(site: Site) -> None:
    conn = site.connect()
    try:
        started = time.monotonic()
        conn.request("GET", "/sse", headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        assert resp.status == 200
        lines = [resp.readline(), resp.readline()]
        # The upstream sends one event every 0.3 s for 4.5 s: buffering would hold the first one back.
        assert lines == [b"event: tick\n", b"data: 0\n"]
        assert time.monotonic() - started < 1.5
        assert not resp.isclosed()
    finally:
        conn.close()


def test_the_app_sees_the_public_host_and_scheme_and_the_uri_as_sent(site: Site) -> None:
    status, _, body = site.request(
        "GET", "/chatgpt/records/t:a%2Fb?x=1", headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}
    )
    seen = json.loads(body)
    assert status == 200
    assert seen["path"] == "/chatgpt/records/t:a%2Fb?x=1"  # encoded ids survive
    assert seen["headers"]["X-Forwarded-Host"] == f"{NAME}:{site.https_port}"
    assert seen["headers"]["X-Forwarded-Proto"] == "https"
    assert seen["headers"]["Host"] == f"{NAME}:{site.https_port}"
    assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert len(seen["headers"]["X-Request-ID"]) == 32
    assert "X-Environment-Path" not in seen["headers"] or seen["headers"]["X-Environment-Path"] == ""


def test_a_client_request_id_is_kept(site: Site) -> None:
    _, _, body = site.request("GET", "/echo", headers={"X-Request-ID": "trace-42"})
    assert json.loads(body)["headers"]["X-Request-ID"] == "trace-42"


def test_unknown_host_names_are_refused(site: Site) -> None:
    with pytest.raises(ssl.SSLError):
        site.request("GET", "/health", host="other.test")
    conn = http.client.HTTPConnection("127.0.0.1", site.http_port, timeout=5)
    try:
        conn.request("GET", "/health", headers={"Host": "other.test"})
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()  # 444: nginx closes without answering
    finally:
        conn.close()


def test_tls_below_1_2_is_refused(site: Site) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cafile=str(site.cafile))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    conn = site.connect(context=old)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            conn.request("GET", "/health")
    finally:
        conn.close()


def test_sign_in_endpoints_are_rate_limited(site: Site) -> None:
    statuses = [site.request("POST", "/token", body=b"grant_type=x")[0] for _ in range(8)]
    assert statuses[0] == 200
    assert 429 in statuses


def test_oversized_bodies_are_refused_by_nginx(site: Site) -> None:
    status, _, _ = site.request(
        "POST", "/mcp", body=b"x" * (3 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert status == 413


def test_a_path_prefix_is_stripped_and_announced(prefixed_site: Site) -> None:
    status, _, body = prefixed_site.request("GET", "/prod/chatgpt/mcp?x=1")
    seen = json.loads(body)
    assert status == 200
    assert seen["path"] == "/chatgpt/mcp?x=1"
    assert seen["headers"]["X-Environment-Path"] == "/prod"
    status, _, _ = prefixed_site.request("GET", "/chatgpt/mcp")
    assert status == 404  # nothing outside the prefix reaches the app


@pytest.fixture(scope="module")
def balanced_site(upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """nginx behind a load balancer at 127.0.0.1 (nginx_real_ip_from), as the GCP inventory sets it."""
    site, proc = _start_site(tmp_path_factory.mktemp("balanced"), upstream, nginx_real_ip_from=["127.0.0.1/32"])
    yield site
    _stop(proc)


def test_behind_a_balancer_the_client_it_names_is_the_client(site: Site, balanced_site: Site) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    _, _, body = balanced_site.request("GET", "/echo", headers=forwarded)
    headers = json.loads(body)["headers"]
    assert headers["X-Real-IP"] == "203.0.113.7"
    assert headers["X-Forwarded-For"].split(",")[-1].strip() == "203.0.113.7"
    # Without nginx_real_ip_from (the default) a client cannot name itself someone else.
    _, _, body = site.request("GET", "/echo", headers=forwarded)
    assert json.loads(body)["headers"]["X-Real-IP"] == "127.0.0.1"
