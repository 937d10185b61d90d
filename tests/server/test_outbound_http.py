"""Outbound HTTP (WAGI 0.8's ``wasi_experimental_http``) on every engine, through gunicorn.

The guest is ``tests/modules/outbound.c``, written against the ABI; the upstream
is a real HTTP server on 127.0.0.1 started here. Since that address is loopback,
every allowed route lists it explicitly, as the SSRF guard demands.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from wagi.config import ConfigError, load_config
from wagi.outbound.abi import HttpError
from wagi.outbound.policy import Origin, is_special_address

from ..support.servers import MODULES, Server, write_config

OUTBOUND = MODULES / "outbound.wasm"


class Upstream(BaseHTTPRequestHandler):
    """The module's peer: a few endpoints whose answers the tests know byte for byte."""

    protocol_version = "HTTP/1.1"
    hits: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self.send_response_only(code, message)  # no Date or Server: exact bytes

    def reply(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def do_PUT(self) -> None:
        self.answer()

    def answer(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.lock:
            self.hits[url.path] = self.hits.get(url.path, 0) + 1
        if url.path == "/echo":
            text = (
                f"{self.command} {self.path}\n"
                f"host: {self.headers.get('Host')}\n"
                f"x-test: {self.headers.get('X-Test')}\n"
                f"content-type: {self.headers.get('Content-Type')}\n"
                f"cookie: {self.headers.get('Cookie')}\n"
                f"body: {body.decode()}\n"
            )
            self.reply(
                200, text.encode(), ("X-Reply", "yes"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")
            )
        elif url.path == "/redirect":
            self.reply(int(query.get("code", "302")), b"moved\n", ("Location", query["to"]))
        elif url.path == "/status":
            self.reply(int(query["code"]), b"status body\n")
        elif url.path == "/slow":
            time.sleep(float(query["s"]))
            self.reply(200, b"late\n")
        elif url.path == "/drip":
            # Every byte comes well within any socket timeout; only a deadline stops it.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(600):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
        elif url.path == "/big":
            self.reply(200, b"x" * int(query["n"]))
        elif url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            remaining = int(query["n"])
            try:
                while remaining:
                    size = min(remaining, 65536)
                    self.wfile.write(b"%x\r\n" % size + b"x" * size + b"\r\n")
                    remaining -= size
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                return
        elif url.path == "/headers":
            self.reply(200, b"ok\n", ("X-Big", "h" * int(query["n"])))
        else:
            self.reply(200, b"target\n")


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hits(path: str) -> int:
    with Upstream.lock:
        return Upstream.hits.get(path, 0)


CONFIG = """
[[module]]
route = "/out"
module = "{outbound}"
allowed_hosts = ["{up}"]
timeout = 20

[[module]]
route = "/limited"
module = "{outbound}"
allowed_hosts = ["{up}"]
http_max_concurrency = 2

[[module]]
route = "/deny"
module = "{outbound}"

[[module]]
route = "/byname"
module = "{outbound}"
allowed_hosts = ["{by_name}"]

[[module]]
route = "/short"
module = "{outbound}"
allowed_hosts = ["{up}"]
timeout = 1
"""


@pytest.fixture(scope="module")
def server(engine: str, upstream: str, server_factory: Callable[..., Server]) -> Server:
    by_name = upstream.replace("127.0.0.1", "localhost")
    text = CONFIG.replace("{outbound}", str(OUTBOUND)).replace("{up}", upstream)
    text = text.replace("{by_name}", by_name)
    return server_factory(
        text,
        engine,
        workers=1,
        extra_env={"WAGI_OUTBOUND_MAX_BODY": "1 MiB", "WAGI_OUTBOUND_MAX_HEADERS": "4 KiB"},
    )


def q(url: str) -> str:
    """A URL as one query item's value (percent-encoded; the module decodes it)."""
    return quote(url, safe="")


def echo_body(method: str, path: str, port: str, x_test: str, ctype: str, body: str) -> str:
    return (
        f"{method} {path}\nhost: 127.0.0.1:{port}\nx-test: {x_test}\ncontent-type: {ctype}\n"
        f"cookie: None\nbody: {body}\n"
    )


def test_get_and_post_with_headers_and_bodies(server: Server, upstream: str) -> None:
    port = upstream.rsplit(":", 1)[1]
    get = echo_body("GET", "/echo?a=1", port, "hello", "None", "")
    r = server.get(f"/out?hdr&header=X-Test:%20hello&req={q(upstream + '/echo?a=1')}&read&close")
    assert r.text == f"req=0 status=200\n{get}\nread=0 bytes={len(get)}\nclose=0\n"

    payload = '{"k": "v w"}'
    post = echo_body("POST", "/echo", port, "two words", "application/json", payload)
    r = server.get(
        "/out?hdr&method=POST&header=X-Test:two%20words&header=Content-Type:application/json"
        f"&body={q(payload)}&req={q(upstream + '/echo')}&read"
    )
    assert r.text == f"req=0 status=200\n{post}\nread=0 bytes={len(post)}\n"


def test_response_status_and_headers(server: Server, upstream: str) -> None:
    r = server.get(
        f"/out?hdr&req={q(upstream + '/echo')}&all&get=x-reply&get=Set-Cookie&get=x-reply:2"
        f"&get=x-missing&req={q(upstream + '/status?code=404')}&read"
    )
    body = echo_body("GET", "/echo", upstream.rsplit(":", 1)[1], "None", "None", "")
    assert r.text == (
        "req=0 status=200\n"
        "all=0\n"
        "content-type:text/plain\n"
        "x-reply:yes\n"
        "set-cookie:a=1\n"
        "set-cookie:b=2\n"
        f"content-length:{len(body)}\n"
        "get x-reply=0 yes\n"
        "get Set-Cookie=0 a=1\n"
        f"get x-reply={HttpError.BUFFER_TOO_SMALL}\n"
        f"get x-missing={HttpError.HEADER_NOT_FOUND}\n"
        "req=0 status=404\n"
        "status body\n\nread=0 bytes=12\n"
    )


def test_a_host_not_listed_is_refused_before_any_connection(server: Server, upstream: str) -> None:
    before = hits("/target")
    other_port = upstream.replace(upstream.rsplit(":", 1)[1], "1")
    r = server.get(
        f"/out?hdr&req={q(upstream.replace('127.0.0.1', '127.0.0.2') + '/target')}"
        f"&req={q('https://example.com/')}&req={q(other_port + '/target')}"
        f"&req={q(upstream.replace('http:', 'https:') + '/target')}"
    )
    assert r.text == f"req={HttpError.DESTINATION_NOT_ALLOWED}\n" * 4
    r = server.get(f"/deny?hdr&req={q(upstream + '/target')}")
    assert r.text == f"req={HttpError.DESTINATION_NOT_ALLOWED}\n"
    assert hits("/target") == before
    assert "https://example.com is not in allowed_hosts" in server.log()
    assert "[/deny] [wagi: outbound HTTP: " in server.log()


def test_redirects_are_followed_only_within_the_allowed_hosts(
    server: Server, upstream: str
) -> None:
    port = upstream.rsplit(":", 1)[1]
    inside = upstream + "/redirect?code=303&to=" + q("/echo?after=redirect")
    r = server.get(f"/out?hdr&method=POST&body=payload&req={q(inside)}&read")
    after = echo_body("GET", "/echo?after=redirect", port, "None", "None", "")
    assert r.text == f"req=0 status=200\n{after}\nread=0 bytes={len(after)}\n"

    # 307 keeps the method and the body.
    inside = upstream + "/redirect?code=307&to=" + q(upstream + "/echo")
    r = server.get(f"/out?hdr&method=PUT&body=kept&req={q(inside)}&read")
    kept = echo_body("PUT", "/echo", port, "None", "None", "kept")
    assert r.text == f"req=0 status=200\n{kept}\nread=0 bytes={len(kept)}\n"

    before = hits("/target")
    for target in (upstream.replace("127.0.0.1", "127.0.0.2"), "http://example.com"):
        outside = upstream + "/redirect?to=" + q(target + "/target")
        r = server.get(f"/out?hdr&req={q(outside)}")
        assert r.text == f"req={HttpError.DESTINATION_NOT_ALLOWED}\n"
    assert hits("/target") == before
    assert "a redirect to http://example.com is not in allowed_hosts" in server.log()


def test_loopback_by_name_is_refused_unless_listed_as_an_address(
    server: Server, upstream: str
) -> None:
    before = hits("/target")
    by_name = upstream.replace("127.0.0.1", "localhost")
    r = server.get(f"/byname?hdr&req={q(by_name + '/target')}")
    assert r.text == f"req={HttpError.DESTINATION_NOT_ALLOWED}\n"
    assert hits("/target") == before
    assert "localhost resolves only to" in server.log()


def test_a_slow_upstream_ends_at_the_module_deadline(server: Server, upstream: str) -> None:
    # The upstream answers after 60 s, and the drip sends a byte every 0.1 s for a
    # minute; the module's timeout is 1 s and the test client's 30 s.
    for path in ("/slow?s=60", "/drip"):
        started = time.monotonic()
        r = server.get(f"/short?hdr&req={q(upstream + path)}&count")
        assert r.status_code == 504, r.text
        assert r.text == "504 Gateway Timeout: the module timed out\n"
        assert time.monotonic() - started < 25
    # The worker (or, on wasmer, its replacement) serves the next request.
    r = server.get(f"/out?hdr&req={q(upstream + '/target')}&read")
    assert r.text == "req=0 status=200\ntarget\n\nread=0 bytes=7\n"


def test_oversized_responses_fail_the_request(server: Server, upstream: str) -> None:
    limit = 1024 * 1024
    r = server.get(f"/out?hdr&req={q(upstream + f'/big?n={limit}')}&count")
    assert r.text == f"req=0 status=200\ncount=0 bytes={limit}\n"
    r = server.get(f"/out?hdr&req={q(upstream + f'/big?n={limit + 1}')}")
    assert r.text == f"req={HttpError.REQUEST_ERROR}\n"
    # Without a Content-Length the body is cut off where it passes the limit.
    r = server.get(f"/out?hdr&req={q(upstream + f'/chunked?n={2 * limit}')}&count&count")
    lines = r.text.splitlines()
    assert lines[0] == "req=0 status=200"
    assert lines[1].startswith(f"count={HttpError.REQUEST_ERROR} bytes=")
    assert int(lines[1].rsplit("=", 1)[1]) <= limit
    assert lines[2] == f"count={HttpError.REQUEST_ERROR} bytes=0"
    r = server.get(f"/out?hdr&req={q(upstream + '/headers?n=5000')}")
    assert r.text == f"req={HttpError.REQUEST_ERROR}\n"
    assert "over the 4096 byte limit (--outbound-max-headers)" in server.log()
    assert f"over the {limit} byte limit (--outbound-max-body)" in server.log()


def test_handles_are_capped_and_freed(server: Server, upstream: str) -> None:
    target = q(upstream + "/target")
    r = server.get(f"/out?hdr&open=70:{target}")
    assert r.text == f"open ok=64 err={HttpError.TOO_MANY_SESSIONS}\n"
    # The run's handles were closed when it ended; closing frees a handle at once.
    r = server.get(f"/out?hdr&cycle=150:{target}&open=64:{target}")
    assert r.text == "cycle ok=150 err=0\nopen ok=64 err=0\n"


def test_http_max_concurrency(server: Server, upstream: str) -> None:
    target = q(upstream + "/target")
    r = server.get(f"/limited?hdr&open=3:{target}")
    assert r.text == f"open ok=2 err={HttpError.TOO_MANY_SESSIONS}\n"
    r = server.get(f"/limited?hdr&req={target}&req={target}&req={target}&close&req={target}")
    assert r.text == (
        f"req=0 status=200\nreq=0 status=200\nreq={HttpError.TOO_MANY_SESSIONS}\n"
        "close=0\nreq=0 status=200\n"
    )
    assert "the limit (http_max_concurrency) is 2" in server.log()


def test_bad_arguments_get_the_abi_errors(server: Server, upstream: str) -> None:
    target = q(upstream + "/target")
    r = server.get(
        f"/out?hdr&badhandle&badptr=x&req=not-a-url&req={q('ftp://127.0.0.1/')}"
        f"&method=NO%20WAY&req={target}&method=GET&header=bad%20name:x&req={target}"
        "&close=12345"
    )
    assert r.text == (
        f"badhandle={HttpError.INVALID_HANDLE}\n"
        f"badptr={HttpError.MEMORY_ACCESS_ERROR}\n"
        f"req={HttpError.INVALID_URL}\n"
        f"req={HttpError.INVALID_URL}\n"
        f"req={HttpError.INVALID_METHOD}\n"
        f"req={HttpError.INVALID_ENCODING}\n"
        "close=0\n"
    )


# -- configuration --------------------------------------------------------------


def test_origins_are_parsed_as_wagi_did() -> None:
    assert Origin.parse("https://API.Example.com") == Origin("https", "api.example.com", 443)
    assert Origin.parse("http://127.0.0.1:8080/") == Origin("http", "127.0.0.1", 8080)
    assert Origin.parse("http://[::1]:9") == Origin("http", "::1", 9)
    assert str(Origin.parse("http://[::1]:9")) == "http://[::1]:9"
    assert str(Origin.parse("https://example.com:443")) == "https://example.com"


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.9.9.9", "::1", "169.254.169.254", "fe80::1", "0.0.0.0",
                "::ffff:127.0.0.1", "fd00:ec2::254", "100.100.100.200", "224.0.0.1"]
)  # fmt: skip
def test_special_addresses(address: str) -> None:
    import ipaddress

    assert is_special_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.1", "93.184.216.34", "2001:db8::1"])
def test_ordinary_addresses(address: str) -> None:
    import ipaddress

    assert not is_special_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('allowed_hosts = "https://a.example"', "key 'allowed_hosts': expected a list of origins"),
        ('allowed_hosts = ["a.example"]', "key 'allowed_hosts': 'a.example' is not an origin"),
        ('allowed_hosts = ["ftp://a.example"]', "'ftp://a.example' is not an origin"),
        ('allowed_hosts = ["https://a.example/api"]', "paths, queries and user names cannot"),
        ('allowed_hosts = ["http://a.example:99999"]', "'http://a.example:99999': invalid port"),
        ("allowed_hosts = [1]", "expected an origin such as"),
        ("http_max_concurrency = 0", "key 'http_max_concurrency': expected a positive integer"),
        ('http_max_concurrency = "2"', "key 'http_max_concurrency': expected a positive integer"),
        ("http_max_concurrency = 65", "65 is above wagi's limit of 64 responses open at once"),
    ],
)
def test_bad_outbound_configuration_names_the_key(tmp_path: Path, extra: str, message: str) -> None:
    path = write_config(tmp_path, f'[[module]]\nroute = "/o"\nmodule = "{OUTBOUND}"\n{extra}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: [[module]] #1 (route '/o'), key " in str(info.value)
    assert message in str(info.value)


def test_outbound_configuration_is_parsed(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'[[module]]\nroute = "/o"\nmodule = "{OUTBOUND}"\n'
        'allowed_hosts = ["https://a.example", "http://127.0.0.1:8080", "https://a.example:443"]\n'
        "http_max_concurrency = 3\n",
    )
    (entry,) = load_config(path).modules
    assert entry.allowed_hosts == (
        Origin("https", "a.example", 443),
        Origin("http", "127.0.0.1", 8080),
    )
    assert entry.http_max_concurrency == 3
