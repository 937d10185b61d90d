"""The conformance suite: the documented contract end to end, through gunicorn, on every engine.

What it checks is written in docs/configuration.md ('Routing'), docs/cgi.md (the request,
the response, streaming, framing) and docs/security.md (isolation and faults).

Each engine available on this Python gets one real gunicorn server (one worker,
so consecutive requests share a process and any leak between them shows) and
the same assertions, byte for byte. On wasmtime the probe also runs as a WASI 0.2
component (``probe.component.wasm``: the same probe.c through the preview 1 adapter),
against the same assertions: a command answers alike in either form.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

import wagi

from ..support.servers import ENGINES, MODULES, PROBE, Server, env_lines, split_response

PROBE_COMPONENT = MODULES / "probe.component.wasm"

FLAVOURS = [(engine, "module") for engine in ENGINES]
if "wasmtime" in ENGINES:
    FLAVOURS.append(("wasmtime", "component"))

CONFIG = """
[[module]]
route = "/probe/..."
module = "{probe}"

[[module]]
route = "/exact"
module = "{probe}"

[[module]]
route = "/healthz"
module = "{probe}"

[[module]]
route = "/vectored"
module = "{modules}/vectored.wasm"

[[module]]
route = "/hello"
module = "{samples}/hello.wat"

[[module]]
route = "/routes/..."
module = "{samples}/routes.wasm"

[[module]]
route = "/routes/goodbye/exact"
module = "{probe}"

[[module]]
route = "/layered/..."
module = "{probe}"
environment = {{ SHARED = "module wins", FROM_MODULE = "m", SERVER_NAME = "overridden?" }}

[[module]]
route = "/argv"
module = "{probe}"
argv = "${{SCRIPT_NAME}} hdr ${{ARGS}}"

[[module]]
route = "/slow"
module = "{probe}"
timeout = 1
"""

MAX_BODY = 4096
MAX_RESPONSE = 100_000


@pytest.fixture(scope="module", params=FLAVOURS, ids=lambda flavour: "-".join(flavour))
def flavour(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(engine, the probe's form): every engine runs the probe as a core module, wasmtime
    as a component too."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server(
    flavour: tuple[str, str],
    server_factory: Callable[..., Server],
    tmp_path_factory: pytest.TempPathFactory,
) -> Server:
    engine, form = flavour
    probe = PROBE_COMPONENT if form == "component" else PROBE
    env_file = tmp_path_factory.mktemp("envfile") / "global.env"
    env_file.write_text("FROM_FILE=file\nFILE_ONLY=1\nSHARED=file\n")
    return server_factory(
        CONFIG.replace("{probe}", str(probe)),
        engine,
        workers=1,
        extra_env={
            "WAGI_ENV": "SHARED=global FROM_FILE=flag-wins 'SPACED=two words'",
            "WAGI_ENV_FILE": str(env_file),
            "WAGI_MAX_BODY": str(MAX_BODY),
            "WAGI_MAX_RESPONSE": str(MAX_RESPONSE),
        },
    )


def head_and_body(raw: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    head, body = split_response(raw)
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers, body


# --- routing (docs/configuration.md, 'Routing') ------------------------------------------


def test_healthz_comes_before_every_module(server: Server) -> None:
    r = server.get("/healthz")
    assert (r.status_code, r.content) == (200, b"OK")


def test_unknown_route_is_404(server: Server) -> None:
    for path in ("/nope", "/exact/", "/exactly", "/prob"):
        r = server.get(path)
        assert r.status_code == 404, path
        assert r.text == "404 Not Found\n"


def test_hello_wat(server: Server) -> None:
    r = server.get("/hello")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain"
    assert r.content == b"Hello, world!\n"


def test_prefix_route_matches_itself_and_below(server: Server) -> None:
    for path, info in (("/probe", ""), ("/probe/a/b", "/a/b")):
        r = server.get(path + "?hdr&env")
        env = env_lines(r.text)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/probe", info)


def test_dynamic_subroutes_call_their_exports(server: Server) -> None:
    hello = server.get("/routes/hello")
    assert hello.status_code == 200
    assert hello.text == (
        "This is the routes sample: export hello ran.\n"
        "SCRIPT_NAME=/routes/hello\nPATH_INFO=\nX_MATCHED_ROUTE=/routes/hello\n"
    )
    bye = server.get("/routes/goodbye/x/y")
    assert bye.text == (
        "This is the routes sample: export goodbye ran.\n"
        "SCRIPT_NAME=/routes/goodbye\nPATH_INFO=/x/y\nX_MATCHED_ROUTE=/routes/goodbye/...\n"
    )
    parent = server.get("/routes/other")
    assert parent.text == (
        "This is the routes sample: export _start ran.\n"
        "SCRIPT_NAME=/routes\nPATH_INFO=/other\nX_MATCHED_ROUTE=/routes/...\n"
    )


def test_declared_exact_route_beats_a_subroute_prefix(server: Server) -> None:
    r = server.get("/routes/goodbye/exact?hdr&print=probe")
    assert r.text == "probe\n"


# --- the CGI request (docs/cgi.md, 'The request') ----------------------------------------


def test_full_environment_exact(server: Server) -> None:
    raw = server.raw(
        b"GET /probe/fizz/buzz?hdr&env HTTP/1.1\r\n"
        b"Host: example.test:8080\r\n"
        b"X-Custom: v\r\n"
        b"Authorization: Basic dXNlcjpwdw==\r\n"
        b"Proxy: http://evil.example/\r\n"
        b"Connection: close\r\n\r\n"
    )
    status, head, body = head_and_body(raw)
    assert status == "HTTP/1.1 200 OK"
    env = env_lines(body.decode())
    port = env.pop("REMOTE_PORT")
    assert port.isdigit()
    request_id = env.pop("X_REQUEST_ID")  # generated: tests/server/test_observability.py
    assert head["x-request-id"] == [request_id]
    assert env == {
        "AUTH_TYPE": "Basic",
        "CONTENT_LENGTH": "0",
        "CONTENT_TYPE": "",
        "FILE_ONLY": "1",
        "FROM_FILE": "flag-wins",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "HTTP_HOST": "example.test:8080",
        "HTTP_X_CUSTOM": "v",
        "PATH_INFO": "/fizz/buzz",
        "PATH_TRANSLATED": "/fizz/buzz",
        "QUERY_STRING": "hdr&env",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_HOST": "127.0.0.1",
        "REMOTE_USER": "",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/probe/fizz/buzz?hdr&env",
        "SCRIPT_NAME": "/probe",
        "SERVER_NAME": "example.test",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": f"WAGI/{wagi.__version__}",
        "SHARED": "global",
        "SPACED": "two words",
        "X_FULL_URL": "http://example.test:8080/probe/fizz/buzz?hdr&env",
        "X_MATCHED_ROUTE": "/probe/...",
        "X_RAW_PATH_INFO": "/fizz/buzz",
    }


def test_no_host_header_uses_default_host(server: Server) -> None:
    raw = server.raw(b"GET /exact?hdr&env HTTP/1.0\r\n\r\n")
    env = env_lines(head_and_body(raw)[2].decode())
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "3000")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["X_MATCHED_ROUTE"]) == (
        "/exact",
        "",
        "/exact",
    )
    assert "HTTP_HOST" not in env


def test_module_environment_layers_and_cgi_variables_win(server: Server) -> None:
    env = env_lines(server.get("/layered?hdr&env", headers={"Host": "h.test"}).text)
    assert env["SHARED"] == "module wins"
    assert env["FROM_MODULE"] == "m"
    assert env["FROM_FILE"] == "flag-wins"
    assert env["SERVER_NAME"] == "h.test"
    assert env["SERVER_PORT"] == "80"


def test_host_environment_does_not_leak(server: Server) -> None:
    env = env_lines(server.get("/probe?hdr&env").text)
    for name in ("PATH", "HOME", "WAGI_CONFIG", "WAGI_ENGINE", "PYTHONPATH", "USER"):
        assert name not in env


def test_content_type_and_length_are_real(server: Server) -> None:
    r = server.post(
        "/probe?hdr&env", b"a=1&b=2", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    env = env_lines(r.text)
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == "7"
    assert env["REQUEST_METHOD"] == "POST"


def test_percent_encoded_path(server: Server) -> None:
    env = env_lines(server.get("/probe/a%20b%2Fc/%C3%A9?hdr&env").content.decode())
    assert env["PATH_INFO"] == "/a b/c/é"
    assert env["X_RAW_PATH_INFO"] == "/a%20b%2Fc/%C3%A9"
    assert env["SCRIPT_NAME"] == "/probe"


def test_argv_from_query_with_empty_items(server: Server) -> None:
    r = server.get("/probe/x?hdr&&args&&print=a%20b&")
    assert r.text == "argv[0]=/probe\nargv[1]=hdr\nargv[2]=args\nargv[3]=print=a%20b\na b\n"


def test_argv_template(server: Server) -> None:
    r = server.get("/argv?args")
    assert r.text == "argv[0]=/argv\nargv[1]=hdr\nargv[2]=args\n"


def test_body_arrives_on_stdin_exactly(server: Server) -> None:
    body = bytes(range(256)) * 8
    r = server.post("/probe?hdr&cat", body[: MAX_BODY - 100])
    assert r.content == body[: MAX_BODY - 100]


def test_body_over_the_limit_is_413(server: Server) -> None:
    r = server.post("/probe?hdr&cat", b"x" * (MAX_BODY + 1))
    assert r.status_code == 413
    chunked = server.post("/probe?hdr&cat", iter([b"x" * MAX_BODY, b"y"]))  # type: ignore[arg-type]
    assert chunked.status_code == 413


def test_unread_stdin_never_reaches_the_next_request(server: Server) -> None:
    for _ in range(3):
        first = server.post("/probe?hdr&read=3", b"AAAAAAAAAAAAAAAAAAAA")
        assert first.content == b"AAA"
        second = server.post("/probe?hdr&cat", b"BBBB")
        assert second.content == b"BBBB"
        third = server.get("/probe?hdr&cat")
        assert third.content == b""


# --- the CGI response (docs/cgi.md, 'The response') --------------------------------------


def cgi(server: Server, response: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    """Have the probe print ``response`` as its CGI output; return the HTTP response."""
    request = (
        b"POST /probe?cat HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(response)).encode() + b"\r\n\r\n" + response
    )
    return head_and_body(server.raw(request))


def test_crlf_header_block(server: Server) -> None:
    status, headers, body = cgi(server, b"Content-Type: text/x\r\nX-A: 1\r\n\r\nbody\r\n\r\nend")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == ["text/x"]
    assert headers["x-a"] == ["1"]
    assert body == b"body\r\n\r\nend"


def test_repeated_set_cookie_headers_are_kept(server: Server) -> None:
    _, headers, _ = cgi(server, b"Content-Type: t/p\nSet-Cookie: a=1\nSet-Cookie: b=2\n\n")
    assert headers["set-cookie"] == ["a=1", "b=2"]


@pytest.mark.parametrize("order", ["status-first", "location-first"])
def test_status_wins_over_location(server: Server, order: str) -> None:
    lines = [b"Status: 201 Created Here", b"Location: /there"]
    if order == "location-first":
        lines.reverse()
    status, headers, _ = cgi(server, b"\n".join(lines) + b"\n\n")
    assert status == "HTTP/1.1 201 Created Here"
    assert headers["location"] == ["/there"]


def test_location_alone_is_302(server: Server) -> None:
    status, headers, body = cgi(server, b"Location: /elsewhere\n\n")
    assert status.startswith("HTTP/1.1 302 ")
    assert headers["location"] == ["/elsewhere"]
    assert body == b""


def test_status_only_gets_no_invented_content_type(server: Server) -> None:
    status, headers, _ = cgi(server, b"Status: 204\n\n")
    assert status.startswith("HTTP/1.1 204")
    assert "content-type" not in headers


def test_hop_by_hop_headers_are_dropped(server: Server) -> None:
    _, headers, body = cgi(
        server, b"Content-Type: t/p\nTransfer-Encoding: chunked\nContent-Length: 99\n\nabc"
    )
    assert "transfer-encoding" not in headers
    assert headers["content-length"] == ["3"]
    assert body == b"abc"


@pytest.mark.parametrize(
    "output",
    [
        b"no header block at all",
        b"X-Only: header\n\nbody",
        b"Bad Header Line\n\n",
        b"Status: 700\n\n",
        b"",
    ],
)
def test_invalid_cgi_response_is_500(server: Server, output: bytes) -> None:
    status, _, body = cgi(server, output)
    assert status == "HTTP/1.1 500 Internal Server Error"
    assert body == b"500 Internal Server Error: the module's response was not valid CGI\n"
    assert "invalid CGI response" in server.log()


def test_exit_zero_is_success(server: Server) -> None:
    r = server.get("/probe?hdr&print=done&exit=0")
    assert (r.status_code, r.text) == (200, "done\n")


def test_nonzero_exit_is_500(server: Server, flavour: tuple[str, str]) -> None:
    r = server.get("/probe?hdr&print=partial&exit=3")
    assert r.status_code == 500
    assert r.text == "500 Internal Server Error: the module failed\n"
    # WASI 0.2's exit says only ok or error: the adapter turns exit(3) into an error, code 1.
    code = 1 if flavour[1] == "component" else 3
    assert f"[/probe/...] exited with code {code}" in server.log()


def test_trap_is_500(server: Server) -> None:
    r = server.get("/probe?hdr&print=partial&trap")
    assert r.status_code == 500
    assert r.text == "500 Internal Server Error: the module failed\n"
    assert "[/probe/...] trapped" in server.log()


def test_vectored_write_delivers_every_buffer(server: Server) -> None:
    r = server.get("/vectored")
    assert r.status_code == 200
    assert r.content == b"part one\npart two\npart three\n"


def test_stderr_goes_to_the_log_tagged_with_the_route(server: Server) -> None:
    r = server.get("/exact?hdr&err=marker-from-module&print=ok")
    assert r.text == "ok\n"
    assert re.search(r"\[/exact\] marker-from-module", server.log())


def test_output_over_the_limit_is_500(server: Server) -> None:
    r = server.get(f"/probe?hdr&out={MAX_RESPONSE + 1}")
    assert r.status_code == 500
    assert r.text == "500 Internal Server Error: the module's response was too large\n"
    ok = server.get(f"/probe?hdr&out={MAX_RESPONSE - 100}")
    assert ok.content == b"x" * (MAX_RESPONSE - 100)


def test_large_binary_output(server: Server) -> None:
    body = bytes(range(256)) * 15
    assert server.post("/probe?hdr&cat", body).content == body


def test_head_request_has_no_body(server: Server) -> None:
    import requests

    r = requests.head(server.url + "/hello", timeout=10)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Length"] == "14"


# --- isolation and faults (docs/security.md) ---------------------------------------------


def test_timeout_is_504_and_the_server_keeps_serving(server: Server) -> None:
    r = server.get("/slow?hdr&loop")
    assert r.status_code == 504
    assert r.text == "504 Gateway Timeout: the module timed out\n"
    assert re.search(r"\[/slow\] timed out", server.log())
    for i in range(20):
        ok = server.get(f"/probe?hdr&print=after-{i}")
        assert (ok.status_code, ok.text) == (200, f"after-{i}\n")


def test_no_filesystem_without_volumes(server: Server) -> None:
    r = server.get("/probe?hdr&readfile=/etc/passwd&ls=/&ls=.&ls=..")
    assert r.text.startswith("ERR ")
    assert "passwd" not in r.text and "root:" not in r.text and "etc" not in r.text


def test_module_replaced_on_disk_is_picked_up(
    engine: str, server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    module = tmp_path / "swap.wat"
    module.write_text(_wat_response("first"))
    config = f'[[module]]\nroute = "/swap"\nmodule = "{module}"\n'
    srv = server_factory(config, engine, workers=1)
    assert srv.get("/swap").text == "first"
    module.write_text(_wat_response("second!"))
    assert srv.get("/swap").text == "second!"
    # Gone or broken: the last good version goes on (docs/configuration.md, routing).
    module.unlink()
    assert srv.get("/swap").text == "second!"
    cannot = f"{module}: this version of the module file cannot be served ("
    assert f"{cannot}No such file or directory)" in srv.log()
    module.write_text('(module (func (export "_start")) (oops))')
    assert srv.get("/swap").text == "second!"
    assert f"{cannot}not a valid WebAssembly text module" in srv.log()
    module.write_text(_wat_response("back"))
    assert srv.get("/swap").text == "back"


def test_malformed_requests_get_400_and_the_server_keeps_serving(server: Server) -> None:
    for garbage in (b"GARBAGE\r\n\r\n", b"GET /hello HTTP/1.1\r\nBad Header\r\n\r\n"):
        assert server.raw(garbage).startswith(b"HTTP/1.1 400 ")
    assert server.get("/hello").text == "Hello, world!\n"


def _wat_response(text: str) -> str:
    payload = f"Content-Type: text/plain\\n\\n{text}"
    length = len(f"Content-Type: text/plain\n\n{text}")
    return f"""(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 64) "{payload}")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const {length}))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def test_the_master_never_loads_an_engine(server: Server) -> None:
    """A forked child of a process that compiled hangs: engines live in workers only."""
    assert server.get("/hello").status_code == 200
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "wasmtime" not in maps
    assert "wasmer" not in maps


def test_a_lost_worker_is_replaced(server: Server) -> None:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    workers = [int(pid) for pid in children.read_text().split()]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    for i in range(10):
        r = server.get(f"/probe?hdr&print=alive-{i}")
        assert (r.status_code, r.text) == (200, f"alive-{i}\n")
