"""Streaming responses through real gunicorn, on every engine.

wasmtime streams: once the header block is complete the body reaches the client
as the module writes it. wasmer cannot (it holds the GIL while a module runs and
has no output hook): it sends the same bytes when the module ends.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.servers import Server
from tests.support.wat import WatModule
from tests.support.workers import worker_pids

HEAD = "Content-Type: text/plain\n\n"


def serve(
    server_factory: Callable[..., Server],
    engine: str,
    tmp_path: Path,
    modules: dict[str, WatModule],
    *,
    timeout: float | None = None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """A server whose route ``/<name>`` runs each WAT module."""
    entries = []
    for name, module in modules.items():
        path = tmp_path / f"{name}.wat"
        path.write_text(module.text())
        entries.append(f'[[module]]\nroute = "/{name}"\nmodule = "{path}"\n')
        if timeout is not None:
            entries.append(f"timeout = {timeout}\n")
    return server_factory("\n".join(entries), engine, extra_env=extra_env or {}, workers=1)


def connect(server: Server) -> http.client.HTTPConnection:
    host, port = server.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def raw_get(server: Server, path: str) -> bytes:
    return server.raw(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) / 1024


def test_first_bytes_arrive_while_the_module_computes(
    server_factory: Callable[..., Server], engine: str, tmp_path: Path
) -> None:
    module = WatModule().print(HEAD + "first\n").busy(2000).print("last\n")
    server = serve(server_factory, engine, tmp_path, {"slow": module})
    conn = connect(server)
    started = time.monotonic()
    conn.request("GET", "/slow")
    response = conn.getresponse()
    first = response.read1(100)
    first_at = time.monotonic() - started
    rest = response.read()
    ended_at = time.monotonic() - started
    assert response.status == 200
    assert first + rest == b"first\nlast\n"
    assert ended_at >= 2.0
    if engine == "wasmtime":
        assert first == b"first\n"
        assert first_at < 1.5, f"first byte after {first_at:.2f}s: not streamed"
        assert response.getheader("Transfer-Encoding") == "chunked"
    else:  # wasmer buffers: everything arrives when the module ends, with a Content-Length
        assert first_at >= 2.0
        assert response.getheader("Content-Length") == "11"


def test_small_responses_are_sent_whole_with_a_content_length(
    server_factory: Callable[..., Server], engine: str, tmp_path: Path
) -> None:
    server = serve(server_factory, engine, tmp_path, {"hello": WatModule().print(HEAD + "hi\n")})
    r = server.get("/hello")
    assert r.status_code == 200
    assert r.content == b"hi\n"
    assert r.headers["Content-Length"] == "3"
    assert "Transfer-Encoding" not in r.headers


@pytest.mark.parametrize(
    ("failure", "log_line"),
    [
        (lambda m: m.trap(), "trapped"),
        (lambda m: m.exit(7), "exited with code 7"),
        (lambda m: m.busy(5000), "timed out: the module was stopped at its 1 s timeout"),
    ],
    ids=["trap", "exit", "timeout"],
)
def test_a_failure_after_the_first_bytes_cuts_the_response(
    server_factory: Callable[..., Server],
    tmp_path: Path,
    failure: Callable[[WatModule], WatModule],
    log_line: str,
) -> None:
    module = failure(WatModule().print(HEAD + "first\n").busy(300))
    server = serve(server_factory, "wasmtime", tmp_path, {"fail": module}, timeout=1)
    answer = raw_get(server, "/fail")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Transfer-Encoding: chunked" in head
    assert body.startswith(b"6\r\nfirst\n\r\n")
    assert not body.endswith(b"0\r\n\r\n"), "a failed module must never look like a clean end"
    time.sleep(0.2)
    assert f"[/fail] {log_line}" in server.log()
    assert server.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("failure", "status", "text"),
    [
        (lambda m: m.trap(), 500, "500 Internal Server Error: the module failed\n"),
        (lambda m: m.busy(5000), 504, "504 Gateway Timeout: the module timed out\n"),
    ],
    ids=["trap", "timeout"],
)
def test_a_failure_after_the_header_block_but_before_any_body_is_a_clean_error(
    server_factory: Callable[..., Server],
    engine: str,
    tmp_path: Path,
    failure: Callable[[WatModule], WatModule],
    status: int,
    text: str,
) -> None:
    if engine == "wasmer" and status == 504:
        pytest.skip("wasmer timeouts end the worker (test_conformance covers them)")
    module = failure(WatModule().print(HEAD).busy(300))
    server = serve(server_factory, engine, tmp_path, {"fail": module}, timeout=1)
    r = server.get("/fail")
    assert (r.status_code, r.text) == (status, text)


def test_a_gigabyte_streams_in_bounded_worker_memory(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    total = 1 << 30
    module = WatModule().print(HEAD).busy(50).flood(total)
    server = serve(
        server_factory,
        "wasmtime",
        tmp_path,
        {"big": module},
        extra_env={"WAGI_MAX_RESPONSE": str(2 << 30)},
    )
    conn = connect(server)
    conn.request("GET", "/big")
    response = conn.getresponse()
    assert response.status == 200
    received = 0
    while chunk := response.read1(1 << 20):
        assert chunk.count(b"x") == len(chunk)
        received += len(chunk)
    assert received == total
    peaks = [peak_rss_mib(pid) for pid in worker_pids(server)]
    print(f"worker peak RSS while streaming 1 GiB: {max(peaks):.0f} MiB")
    assert max(peaks) < 400, f"peak RSS {max(peaks):.0f} MiB: the body was held in memory"


def test_max_response_holds_mid_stream(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    module = WatModule().print(HEAD).busy(50).flood(8 << 20)
    server = serve(
        server_factory,
        "wasmtime",
        tmp_path,
        {"flood": module},
        extra_env={"WAGI_MAX_RESPONSE": str(3 << 20)},
    )
    answer = raw_get(server, "/flood")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert not body.endswith(b"0\r\n\r\n")
    assert body.count(b"x") <= 3 << 20
    time.sleep(0.2)
    assert (
        "[/flood] the module wrote more than the 3145728 byte response limit (--max-response)"
        in server.log()
    )


def test_a_client_that_goes_away_stops_the_module(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    module = WatModule().print(HEAD + "first\n").busy(50).flood(512 << 20).print("end\n", fd=2)
    server = serve(server_factory, "wasmtime", tmp_path, {"gone": module}, timeout=20)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"GET /gone HTTP/1.1\r\nHost: test\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200 OK")
    deadline = time.monotonic() + 20
    while "[/gone] the client went away" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    assert "[/gone] end" not in server.log(), "the module ran on after its client left"
    assert server.get("/healthz").status_code == 200


def test_a_large_upload_reaches_stdin_and_max_body_holds(
    server_factory: Callable[..., Server], engine: str
) -> None:
    server = server_factory(
        '[[module]]\nroute = "/probe/..."\nmodule = "{probe}"\n',
        engine,
        extra_env={"WAGI_MAX_BODY": str(24 << 20), "WAGI_MAX_RESPONSE": str(32 << 20)},
        workers=1,
    )
    body = os.urandom(1 << 20) * 20
    r = server.post("/probe?hdr&cat", body)
    assert r.status_code == 200
    assert r.content == body
    r = server.post("/probe?hdr&cat", body + body)
    assert r.status_code == 413


def test_a_nul_in_the_path_is_a_400_and_runs_no_module(
    server_factory: Callable[..., Server], engine: str
) -> None:
    server = server_factory(
        '[[module]]\nroute = "/probe/..."\nmodule = "{probe}"\n', engine, workers=1
    )
    r = server.get("/probe/file.txt%00.html?hdr&err=module-ran")
    assert r.status_code == 400
    assert r.text == "400 Bad Request: the path holds a NUL byte (%00)\n"
    r = server.get("/probe/file.txt?hdr&env")
    assert r.status_code == 200
    assert "PATH_INFO=/file.txt\n" in r.text
    assert "] module-ran" not in server.log()
    assert "ERROR" not in server.log()


def test_a_large_upload_is_not_held_in_worker_memory(
    server_factory: Callable[..., Server], engine: str
) -> None:
    """A body past 1 MiB goes to an unlinked temporary file, the module's stdin file."""
    server = server_factory(
        '[[module]]\nroute = "/probe/..."\nmodule = "{probe}"\n',
        engine,
        extra_env={"WAGI_MAX_BODY": str(300 << 20)},
        workers=1,
    )
    body = b"0123456789" + b"x" * ((200 << 20) - 10)
    r = server.post("/probe?hdr&read=10", body)
    assert (r.status_code, r.content) == (200, b"0123456789")
    peaks = [peak_rss_mib(pid) for pid in worker_pids(server)]
    print(f"worker peak RSS after a 200 MiB upload: {max(peaks):.0f} MiB")
    assert max(peaks) < 150, f"peak RSS {max(peaks):.0f} MiB: the body was held in memory"
    r = server.post("/probe?hdr&cat", b"small body")  # small bodies still arrive as bytes
    assert r.content == b"small body"
