"""Faults while serving, through real gunicorn on every engine.

Each fault must give the affected request a clean answer (a short error, or a
closed connection where no process is left to answer), leave a clear line in
the log, and heal: the next requests are answered correctly, with no restart by
hand. Faults covered: a worker killed mid-request, a module file truncated or
replaced with garbage, the log dir removed or replaced, the compiled-module
cache made read-only, and damaged or removed cache entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.support.servers import PROBE, ROOT, Server, start_gunicorn, write_config
from tests.support.wat import WatModule
from tests.support.workers import wait_for, worker_pids

HEAD = "Content-Type: text/plain\n\n"
NOT_LOADED = b"500 Internal Server Error: the module could not be loaded\n"
ARTIFACT_MAGIC = b"wagi-artifact-1\n"


# -- helpers ---------------------------------------------------------------------------


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def connection_inode(client_port: int) -> int | None:
    """The inode of the server side of the loopback connection from ``client_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == client_port and int(fields[9]):
                    return int(fields[9])
    return None


def worker_serving(server: Server, client: socket.socket) -> int:
    """The pid of the worker that accepted ``client``'s connection (waits for the accept)."""
    client_port = client.getsockname()[1]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        inode = connection_inode(client_port)
        if inode is not None:
            for pid in worker_pids(server):
                if inode in socket_inodes(pid):
                    return pid
        time.sleep(0.05)
    raise AssertionError("no worker accepted the connection")


def every_worker_ready(server: Server) -> None:
    """Wait until every worker has accepted a connection: each has built its routing table."""
    host, port = server.url.removeprefix("http://").split(":")
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while not worker_pids(server) <= seen:
        assert time.monotonic() < deadline, "a worker never accepted a connection"
        with socket.create_connection((host, int(port)), timeout=30) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            seen.add(worker_serving(server, client))
            while client.recv(65536):
                pass


def get_ok(server: Server, path: str, expected: bytes, times: int = 6) -> None:
    """``times`` requests (new connections, so both workers get some), each answered exactly."""
    for _ in range(times):
        r = server.get(path, headers={"Connection": "close"})
        assert (r.status_code, r.content) == (200, expected), r.content[:200]


def replace_workers(server: Server) -> set[int]:
    """End every worker (SIGTERM); gunicorn starts fresh ones, which load their modules again."""
    old = worker_pids(server)
    for pid in old:
        os.kill(pid, signal.SIGTERM)
    # Generous: on a loaded CI machine a worker compiles its modules again before it is up.
    wait_for(lambda: len(worker_pids(server) - old) == len(old), "new workers", seconds=180)
    return worker_pids(server)


def serve(tmp: Path, engine: str, config: str, **kwargs: object) -> Server:
    return start_gunicorn(tmp, write_config(tmp, config), engine, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def hello_module(tmp_path: Path) -> None:
    (tmp_path / "hello.wat").write_text(WatModule().print(HEAD + "hello\n").text())


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


# -- a worker killed mid-request -------------------------------------------------------


@pytest.mark.parametrize("when", ["before its first byte", "mid-body"])
def test_sigkill_of_a_worker_mid_request(
    engine: str, when: str, tmp_path: Path, servers: list[Server]
) -> None:
    """The request in flight gets a closed connection (nobody is left to answer it; a body
    already streaming is cut, never ended cleanly), the arbiter says so and starts a new
    worker, and no other request is disturbed."""
    slow = tmp_path / "slow.wat"
    module = WatModule().print(HEAD + "first\n") if when == "mid-body" else WatModule()
    slow.write_text(module.busy(20_000).print(HEAD + "late\n").text())
    server = serve(
        tmp_path,
        engine,
        f'[[module]]\nroute = "/slow"\nmodule = "{slow}"\n'
        f'[[module]]\nroute = "/probe"\nmodule = "{PROBE}"\n',
    )
    servers.append(server)
    booted = server.log().count("Booting worker")
    host, port = server.url.removeprefix("http://").split(":")

    # Good requests all along, on the other worker.
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def good_traffic() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                r = server.get("/probe?hdr&print=good", headers={"Connection": "close"})
                if (r.status_code, r.content) != (200, b"good\n"):
                    failures.append(f"{r.status_code} {r.content[:80]!r}")
                answered += 1
            except requests.RequestException as exc:
                failures.append(repr(exc))

    with socket.create_connection((host, int(port)), timeout=60) as client:
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        victim = worker_serving(server, client)
        traffic = threading.Thread(target=good_traffic)
        traffic.start()
        try:
            time.sleep(0.5)  # the module is computing now
            os.kill(victim, signal.SIGKILL)
            # A clean end for the request in flight: the connection closes, no hang.
            started = time.monotonic()
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
            assert time.monotonic() - started < 15, "the connection stayed open"
            if when == "mid-body" and engine == "wasmtime":  # streamed: headers, then a cut
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert b"Transfer-Encoding: chunked" in head
                assert body == b"6\r\nfirst\n\r\n", "no clean end of a cut body"
            else:
                assert answer == b""
            wait_for(lambda: server.log().count("Booting worker") > booted, "a new worker")
            time.sleep(0.5)
        finally:
            stop.set()
            traffic.join()
    assert not failures, failures
    assert answered > 0
    assert f"Worker (pid:{victim}) was sent SIGKILL!" in server.log()
    assert victim not in worker_pids(server)
    assert len(worker_pids(server)) == 2
    get_ok(server, "/probe?hdr&print=again", b"again\n")
    if engine == "wasmer":  # its watchdog process ends with its worker: nothing is left behind
        out = subprocess.run(
            ["pgrep", "-f", f"wagi.server.watchdog .* {victim}$"], capture_output=True
        )
        assert out.stdout == b""


# -- a module file truncated or replaced while serving --------------------------------


def serve_a_module_file_and_another(
    engine: str, tmp_path: Path, servers: list[Server]
) -> tuple[Server, Path, bytes]:
    """A server with ``/m`` (a copy of the probe, in ``tmp_path``) and ``/other`` (the probe):
    the server, the copy's path and its good bytes."""
    module = tmp_path / "m.wasm"
    good = PROBE.read_bytes()
    module.write_bytes(good)
    server = serve(
        tmp_path,
        engine,
        f'[[module]]\nroute = "/m"\nmodule = "{module}"\n'
        f'[[module]]\nroute = "/other"\nmodule = "{PROBE}"\n',
    )
    servers.append(server)
    every_worker_ready(server)
    return server, module, good


def test_a_module_file_truncated_or_replaced_with_garbage_while_serving(
    engine: str, tmp_path: Path, servers: list[Server]
) -> None:
    """The route keeps serving the last good version (and the log says why, once per
    version and worker) until the file is good again (docs/reliability.md)."""
    server, module, good = serve_a_module_file_and_another(engine, tmp_path, servers)
    get_ok(server, "/m?hdr&print=ok", b"ok\n")
    garbage = hashlib.sha256(b"garbage").digest() * 1000
    damages: dict[str, Callable[[], None]] = {
        "truncated to half": lambda: module.write_bytes(good[: len(good) // 2]),
        "truncated to nothing": lambda: module.write_bytes(b""),
        "garbage": lambda: module.write_bytes(garbage),
        "garbage after a wasm header": lambda: module.write_bytes(good[:8] + garbage),
        "text that is not WAT": lambda: module.write_text("(module (func $f (garbage)))"),
        "a garbage file renamed over it": lambda: atomic_write(module, garbage[:5000]),
    }
    for what, damage in damages.items():
        mark = len(server.log())
        damage()
        for _ in range(4):
            r = server.get("/m?hdr&print=ok", headers={"Connection": "close"})
            assert (r.status_code, r.content) == (200, b"ok\n"), (what, server.log()[mark:])
        get_ok(server, "/other?hdr&print=fine", b"fine\n", times=2)
        assert server.get("/healthz").status_code == 200
        lines = server.log()[mark:].splitlines()
        cannot = f"{module}: this version of the module file cannot be served ("
        logged = [line for line in lines if cannot in line]
        assert 1 <= len(logged) <= 2, (what, lines)  # once in each worker that met it
        atomic_write(module, good) if "renamed" in what else module.write_bytes(good)
        get_ok(server, "/m?hdr&print=ok", b"ok\n")
    assert "Booting worker" in server.log()
    assert server.log().count("Booting worker") == 2, "a worker was lost on the way"


def test_a_worker_started_while_a_module_file_is_broken_still_serves(
    engine: str, tmp_path: Path, servers: list[Server]
) -> None:
    """A worker replaced (OOM kill, a wasmer timeout, max_requests) while a module file is
    damaged must serve the other routes, and that one once it is mended."""
    server, module, good = serve_a_module_file_and_another(engine, tmp_path, servers)
    module.write_bytes(good[: len(good) // 2])
    replace_workers(server)
    time.sleep(2)  # the arbiter halts within a second of a worker failing to boot
    assert server.process.poll() is None, "the whole server stopped"
    get_ok(server, "/other?hdr&print=fine", b"fine\n")
    r = server.get("/m?hdr&print=ok")
    assert (r.status_code, r.content) == (500, NOT_LOADED)
    module.write_bytes(good)
    get_ok(server, "/m?hdr&print=ok", b"ok\n")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- the log dir removed or replaced while serving --------------------------------------


def test_the_log_dir_removed_or_replaced_while_serving(
    engine: str, tmp_path: Path, servers: list[Server]
) -> None:
    """Requests succeed whatever happens to --log-dir; the lines are never lost."""
    logs = tmp_path / "logs"
    server = serve(
        tmp_path,
        engine,
        f'[[module]]\nroute = "/probe"\nmodule = "{PROBE}"\n',
        workers=1,
        extra_env={"WAGI_LOG_DIR": str(logs)},
    )
    servers.append(server)
    log_file = logs / "probe.stderr.log"
    big = 300_000  # past the streaming buffer: the stderr is written after the body is sent

    def request(tag: str, size: int = 0) -> None:
        query = f"hdr&err={tag}&print=ok" + (f"&out={size}" if size else "")
        r = server.get(f"/probe?{query}", headers={"Connection": "close"})
        assert (r.status_code, r.content) == (200, b"ok\n" + b"x" * size), tag

    request("first")
    assert log_file.read_text().endswith("[/probe] first\n")

    shutil.rmtree(logs)
    request("after-rmtree")
    request("streamed-after-rmtree", big)
    if engine == "wasmtime":
        # A confined worker reaches only the log dir it started with (docs/observability.md):
        # the lines go to the error log, none is lost, until the workers are replaced.
        log = server.log()
        assert "[/probe] after-rmtree" in log and "[/probe] streamed-after-rmtree" in log
        assert "until the workers are replaced (a reload, SIGHUP)" in log
        assert server.log().count("Booting worker") == 1, "the worker was replaced"
        return
    assert log_file.read_text().splitlines()[-2:][0].endswith("[/probe] after-rmtree")
    assert log_file.read_text().endswith("[/probe] streamed-after-rmtree\n")

    shutil.rmtree(logs)
    logs.write_text("not a directory\n")  # the files cannot be written at all now
    request("into-the-error-log")
    request("streamed-into-the-error-log", big)
    log = server.log()
    assert log.count("cannot write module stderr to") == 1
    assert f"cannot write module stderr to {log_file} (Not a directory)" in log
    assert "[/probe] into-the-error-log" in log
    assert "[/probe] streamed-into-the-error-log" in log

    logs.unlink()
    request("back")
    assert "module stderr goes to" in server.log()
    assert log_file.read_text().endswith("[/probe] back\n")
    assert "Booting worker" in server.log()
    assert server.log().count("Booting worker") == 1, "the worker was replaced"


# -- the compiled-module cache: read-only, damaged, removed ---------------------------


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make ``directory`` read-only for everyone, root included (a read-only bind mount)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", str(directory), str(directory)]).returncode:
        pytest.skip("cannot bind-mount here (needed to make a directory read-only for root)")
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(directory), str(directory)], check=True
        )
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def artifacts(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/*.bin"))


def is_sound(artifact: Path) -> bool:
    data = artifact.read_bytes()
    header = len(ARTIFACT_MAGIC) + 32
    return data.startswith(ARTIFACT_MAGIC) and (
        data[len(ARTIFACT_MAGIC) : header] == hashlib.sha256(data[header:]).digest()
    )


def test_a_read_only_cache_dir_costs_only_speed(
    engine: str, tmp_path: Path, servers: list[Server]
) -> None:
    module = tmp_path / "m.wat"
    module.write_text(WatModule().print(HEAD + "one\n").text())
    server = serve(tmp_path, engine, f'[[module]]\nroute = "/m"\nmodule = "{module}"\n')
    servers.append(server)
    cache = tmp_path / "cache"
    before = artifacts(cache)
    assert before and all(is_sound(a) for a in before)
    get_ok(server, "/m", b"one\n")
    with read_only(cache):
        # A new version of the module: compiled, but it cannot be stored.
        module.write_text(WatModule().print(HEAD + "two\n").text())
        get_ok(server, "/m", b"two\n")
        replace_workers(server)  # fresh workers find nothing cached and compile
        get_ok(server, "/m", b"two\n")
        assert artifacts(cache) == before
    # Writable again: the next compile is stored.
    replace_workers(server)
    get_ok(server, "/m", b"two\n")
    wait_for(lambda: len(artifacts(cache)) == len(before) + 1, "the new artifact")
    assert all(is_sound(a) for a in artifacts(cache))


def test_a_read_only_cache_dir_is_reported_in_the_log(
    tmp_path: Path, servers: list[Server]
) -> None:
    module = tmp_path / "m.wat"
    module.write_text(WatModule().print(HEAD + "one\n").text())
    # Without the kernel wall: a confined worker never writes the cache (test_wall.py).
    server = serve(
        tmp_path,
        "wasmtime",
        f'[[module]]\nroute = "/m"\nmodule = "{module}"\n',
        workers=1,
        extra_env={"WAGI_KERNEL_WALL": "off"},
    )
    servers.append(server)
    with read_only(tmp_path / "cache"):
        module.write_text(WatModule().print(HEAD + "two\n").text())
        get_ok(server, "/m", b"two\n", times=1)
    assert re.search(r"cache.*(Read-only file system|Permission denied)", server.log())


DAMAGES: dict[str, Callable[[Path], None]] = {
    "one byte flipped": lambda a: a.write_bytes(
        a.read_bytes()[:-100] + bytes([a.read_bytes()[-100] ^ 0xFF]) + a.read_bytes()[-99:]
    ),
    "truncated": lambda a: a.write_bytes(a.read_bytes()[: a.stat().st_size // 2]),
    "empty": lambda a: a.write_bytes(b""),
    "garbage": lambda a: a.write_bytes(hashlib.sha256(b"x").digest() * 300),
    "removed with its directory": lambda a: shutil.rmtree(a.parent.parent),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_cache_entry_is_recompiled(
    engine: str, damage: str, tmp_path: Path, servers: list[Server]
) -> None:
    """New workers meet a damaged artifact: they compile again, serve, and mend the cache."""
    server = serve(
        tmp_path,
        engine,
        f'[[module]]\nroute = "/probe"\nmodule = "{PROBE}"\n'
        f'[[module]]\nroute = "/hello"\nmodule = "{tmp_path / "hello.wat"}"\n',
    )
    servers.append(server)
    get_ok(server, "/probe?hdr&print=ok", b"ok\n")
    cache = tmp_path / "cache"
    before = {a.name: a.read_bytes() for a in artifacts(cache)}
    assert before
    for artifact in artifacts(cache):
        if artifact.exists():
            DAMAGES[damage](artifact)
    replace_workers(server)
    get_ok(server, "/probe?hdr&print=ok", b"ok\n")
    get_ok(server, "/hello", b"hello\n")
    # Mended: the same entries, sound again (both workers may have rewritten them).
    wait_for(lambda: {a.name for a in artifacts(cache)} == set(before), "the mended cache")
    assert all(is_sound(a) for a in artifacts(cache))


def test_a_damaged_cache_entry_is_reported_in_the_log(
    tmp_path: Path, servers: list[Server]
) -> None:
    server = serve(tmp_path, "wasmtime", f'[[module]]\nroute = "/probe"\nmodule = "{PROBE}"\n')
    servers.append(server)
    for artifact in artifacts(tmp_path / "cache"):
        DAMAGES["truncated"](artifact)
    replace_workers(server)
    get_ok(server, "/probe?hdr&print=ok", b"ok\n", times=2)
    assert re.search(r"(damaged|corrupt).*artifact|artifact.*(damaged|corrupt)", server.log())


# -- wagi run ----------------------------------------------------------------------------


def test_wagi_run_reports_a_response_cut_mid_stream(tmp_path: Path) -> None:
    """The bytes sent so far, one line saying why it stopped, exit status 1; no traceback."""
    module = tmp_path / "m.wat"
    module.write_text(WatModule().print(HEAD + "first\n").flood(4 << 20).text())
    config = write_config(tmp_path, f'[[module]]\nroute = "/m"\nmodule = "{module}"\n')
    result = subprocess.run(
        [
            *(sys.executable, "-m", "wagi", "run", "--engine", "wasmtime"),
            *("--config", str(config), "--max-response", "1 MiB"),
            *("--cache-dir", str(tmp_path / "cache"), "/m"),
        ],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("WAGI_")},
        cwd=ROOT,
    )
    assert result.returncode == 1, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain"
    assert body.startswith(b"first\nxxxx") and len(body) <= 1 << 20
    stderr = result.stderr.decode()
    assert "wagi: the response was cut: [/m] output too large after " in stderr
    assert "Traceback" not in stderr
