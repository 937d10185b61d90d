"""Faults outside the request path, through real gunicorn (issue 7: 1, 2, 6, 9, 11).

A worker that can no longer run modules must say why in the log, stop answering OK to
``/healthz`` and be replaced; no setting may start workers that cannot serve; logging
and TLS must never turn into a broken answer.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from wagi.engines.base import Capabilities
from wagi.execution.engine_choice import EngineChoice, worker_problem

from ..support.certificates import self_signed_certificate
from ..support.servers import ENGINES, ROOT, Server, refused_start, write_config
from ..support.workers import booted_workers, children, cmdline, dead, wait_for

PROBE_ROUTE = '[[module]]\nroute = "/p"\nmodule = "{probe}"\n'
UNFIT = (
    "503 Service Unavailable: this worker can no longer run modules and is being replaced; "
    "try again\n"
)
TIMEOUT_ANSWER = (
    b"HTTP/1.1 504 Gateway Timeout\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 42\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"504 Gateway Timeout: the module timed out\n"
)
needs_wasmer = pytest.mark.skipif(
    "wasmer" not in ENGINES, reason="wasmer imports on the CPython 3.10 leg only"
)


# -- 1. worker classes and threads an engine cannot serve ---------------------------------


def choice(thread_safe: bool) -> EngineChoice:
    caps = Capabilities(
        volumes=True,
        read_only_volumes=True,
        memory_limit=True,
        interruptible=True,
        thread_safe=thread_safe,
    )
    return EngineChoice("eng", "requested explicitly", caps)


@pytest.mark.parametrize(
    "worker_class", ["sync", "gunicorn.workers.sync.SyncWorker", "egg:gunicorn#sync"]
)
def test_the_sync_worker_serves_every_engine(worker_class: str) -> None:
    assert worker_problem(choice(thread_safe=False), worker_class, 1) is None
    assert worker_problem(choice(thread_safe=True), worker_class, 1) is None


def test_sync_with_threads_is_gthread() -> None:
    assert worker_problem(choice(thread_safe=True), "sync", 2) is None
    assert "cannot serve gunicorn's gthread worker" in str(
        worker_problem(choice(thread_safe=False), "sync", 2)
    )


@pytest.mark.parametrize("worker_class", ["gthread", "gunicorn.workers.gthread.ThreadWorker"])
def test_gthread_serves_only_a_thread_safe_engine(worker_class: str) -> None:
    assert worker_problem(choice(thread_safe=True), worker_class, 4) is None
    assert worker_problem(choice(thread_safe=False), worker_class, 4) == (
        "engine 'eng' (requested explicitly) cannot serve gunicorn's gthread worker "
        f"(--worker-class {worker_class}, --threads 4): its objects may only be used on the "
        "thread that created them, and gthread serves requests on other threads; use the "
        "sync worker with --threads 1, or --engine wasmtime"
    )


@pytest.mark.parametrize("worker_class", ["gevent", "eventlet", "tornado", "asgi"])
def test_other_worker_classes_are_refused(worker_class: str) -> None:
    assert worker_problem(choice(thread_safe=True), worker_class, 1) == (
        f"gunicorn's worker class {worker_class!r} cannot run modules: wagi runs under the "
        "sync worker (the default) or gthread (--threads N)"
    )


@needs_wasmer
@pytest.mark.parametrize(
    "args", [("--threads", "2"), ("--worker-class", "gthread", "--threads", "1")]
)
def test_wasmer_under_gthread_stops_start_up(tmp_path: Path, args: tuple[str, ...]) -> None:
    config = write_config(tmp_path, PROBE_ROUTE)
    log = refused_start(tmp_path, config, "wasmer", *args)
    threads = args[-1]
    assert "wagi cannot start" in log
    assert (
        "wagi: error: engine 'wasmer' (requested explicitly) cannot serve gunicorn's "
        f"gthread worker (--worker-class gthread, --threads {threads}): its objects may only "
        "be used on the thread that created them" in log
    )


def test_an_unsupported_worker_class_stops_start_up(tmp_path: Path) -> None:
    config = write_config(tmp_path, PROBE_ROUTE)
    log = refused_start(tmp_path, config, "wasmtime", "--worker-class", "asgi")
    assert "wagi cannot start" in log
    assert "wagi: error: gunicorn's worker class 'asgi' cannot run modules" in log


def test_wasmtime_serves_the_gthread_worker(server_factory: Callable[..., Server]) -> None:
    server = server_factory(PROBE_ROUTE, "wasmtime", workers=1, gunicorn_args=("--threads", "2"))
    for n in range(4):
        r = server.get(f"/p?hdr&print=turn{n}")
        assert (r.status_code, r.text) == (200, f"turn{n}\n")
    assert booted_workers(server.log()) == booted_workers(server.log())[:1]


# -- 2. a dead watchdog -------------------------------------------------------------------


def kill_the_watchdog(server_factory: Callable[..., Server]) -> tuple[Server, int, int]:
    """A wasmer server that answered once, its watchdog then killed as an OOM kill would:
    the server, its worker's pid and the dead watchdog's."""
    server = server_factory(PROBE_ROUTE, "wasmer", workers=1)
    assert server.get("/p?hdr&print=before").text == "before\n"
    [worker] = booted_workers(server.log())
    [watchdog] = [c for c in children(worker) if "wagi.server.watchdog" in cmdline(c)]
    os.kill(watchdog, signal.SIGKILL)
    wait_for(lambda: dead(watchdog), "the watchdog to go")
    return server, worker, watchdog


@needs_wasmer
def test_a_worker_whose_watchdog_died_is_replaced(server_factory: Callable[..., Server]) -> None:
    server, worker, watchdog = kill_the_watchdog(server_factory)
    # No request has to meet it: the worker notices on its own (SIGCHLD), says why, goes.
    wait_for(lambda: dead(worker), "the worker to go", seconds=15)
    wait_for(lambda: len(booted_workers(server.log())) == 2, "a new worker")
    # So every request from now on reaches a worker that can run modules: no 503 at all.
    answers = [server.get("/p?hdr&print=after") for _ in range(20)]
    assert [(r.status_code, r.text) for r in answers] == [(200, "after\n")] * 20
    assert server.get("/healthz").status_code == 200
    log = server.log()
    assert log.count("can no longer run modules") == 1
    assert (
        f"wagi: worker {worker} can no longer run modules: its timeout watchdog (pid {watchdog}) "
        "is gone (killed by SIGKILL); it stops after the requests in hand and gunicorn starts "
        "a new one" in log
    )


@needs_wasmer
def test_the_watchdog_answers_the_gateways_own_504(server_factory: Callable[..., Server]) -> None:
    server = server_factory(PROBE_ROUTE + "timeout = 0.5\n", "wasmer", workers=1)
    answer = server.raw(b"GET /p?hdr&loop HTTP/1.1\r\nHost: x\r\n\r\n")
    # The gateway's own 504, byte for byte, plus the request's id (as every answer has).
    request_id = re.search(rb"\r\nX-Request-Id: ([0-9a-f]{32})\r\n", answer)
    assert request_id, answer
    assert answer.replace(b"\r\nX-Request-Id: " + request_id.group(1), b"") == TIMEOUT_ANSWER
    wait_for(lambda: len(booted_workers(server.log())) == 2, "a new worker")
    assert server.get("/p?hdr&print=after").text == "after\n"


# -- 6. module stderr when the log dir fails ------------------------------------------------


def test_a_log_dir_that_fails_never_fails_a_request(
    engine: str, tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    log_dir = tmp_path / "logs"
    server = server_factory(
        PROBE_ROUTE, engine, workers=1, extra_env={"WAGI_LOG_DIR": str(log_dir)}
    )
    r = server.get("/p?hdr&print=one&err=to%20the%20file")
    assert (r.status_code, r.text) == (200, "one\n")
    assert (log_dir / "p.stderr.log").read_text().endswith(" [/p] to the file\n")
    (log_dir / "p.stderr.log").unlink()
    log_dir.rmdir()
    log_dir.write_text("a file where the log dir was")  # cannot be made again
    for n in ("two", "three"):
        r = server.get(f"/p?hdr&print={n}&err=lost%20{n}")
        assert (r.status_code, r.text) == (200, f"{n}\n")
    log = server.log()
    assert log.count("cannot write module stderr") == 1
    assert "[/p] lost two" in log and "[/p] lost three" in log
    log_dir.unlink()
    log_dir.mkdir()
    assert server.get("/p?hdr&print=four&err=back").text == "four\n"
    if engine == "wasmtime":  # a confined worker cannot reach a new log dir: the error log
        assert "[/p] back" in server.log()
        return
    assert (log_dir / "p.stderr.log").read_text().endswith(" [/p] back\n")
    assert f"module stderr goes to {log_dir} again" in server.log()


# -- 9. TLS and the watchdog ----------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def tls_exchange(url: str, request: bytes) -> bytes:
    """Send ``request`` over TLS; everything the server answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=30) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(request)
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@needs_wasmer
def test_a_timeout_over_tls_closes_the_connection_cleanly(
    certificate: tuple[Path, Path], server_factory: Callable[..., Server]
) -> None:
    cert, key = certificate
    server = server_factory(
        PROBE_ROUTE + "timeout = 0.5\n",
        "wasmer",
        workers=1,
        wait=False,
        gunicorn_args=("--certfile", str(cert), "--keyfile", str(key)),
    )
    wait_for(lambda: booted_workers(server.log()), "the worker")
    ok = b"GET /p?hdr&print=hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    wait_for(lambda: tls_exchange(server.url, ok).endswith(b"\r\n\r\nhello\n"), "TLS answers")
    # No plaintext 504 inside the TLS session (the client would see a TLS error): the
    # watchdog cannot speak TLS, so the connection just ends, as when gunicorn kills a worker.
    loop = b"GET /p?hdr&loop HTTP/1.1\r\nHost: x\r\n\r\n"
    assert tls_exchange(server.url, loop) == b""
    wait_for(lambda: len(booted_workers(server.log())) == 2, "a new worker")
    assert tls_exchange(server.url, ok).endswith(b"\r\n\r\nhello\n")
    assert (
        "[/p] timed out after 0.5s and the engine cannot interrupt it: closed the TLS "
        "connection without an answer (it cannot speak TLS) and ended worker" in server.log()
    )


# -- 11. a broken engine --------------------------------------------------------------------


@needs_wasmer
def test_a_worker_whose_engine_broke_is_replaced(server_factory: Callable[..., Server]) -> None:
    # An address-space limit (ulimit -v) with room for one wasmer instance but not two:
    # the scrub that clears wasmer's stdio buffers after each run cannot get its memory,
    # and the engine refuses every run after that (it could leak one request's bytes
    # into the next).
    server = server_factory(
        PROBE_ROUTE, "wasmer", workers=1, wrapper=("prlimit", f"--as={9 << 30}", "--")
    )
    r = server.get("/p?hdr&print=hi")
    assert (r.status_code, r.text) == (503, UNFIT)
    [first, *_] = booted_workers(server.log())
    wait_for(lambda: len(booted_workers(server.log())) >= 2, "a new worker")
    wait_for(lambda: server.get("/healthz").status_code == 200, "the new worker")
    log = server.log()
    assert (
        f"wagi: worker {first} can no longer run modules: its engine is broken (wasmer engine "
        "disabled: clearing stdio buffers between runs failed (" in log
    )
    assert "[/p] cannot run" not in log  # no 500 answered, no ERROR per request


def test_nothing_is_answered_500_for_a_healthy_worker(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(PROBE_ROUTE, ENGINES[0], workers=1)
    r = server.get("/healthz")
    assert (r.status_code, r.text) == (200, "OK")
    assert requests.get(server.url + "/p?hdr&print=x", timeout=30).text == "x\n"


@needs_wasmer
def test_check_names_the_worker_settings_it_refuses(tmp_path: Path) -> None:
    config = write_config(tmp_path, PROBE_ROUTE)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "wagi", "check", "--quiet", "--config", str(config)),
            *("--engine", "wasmer", "--threads", "2", "--cache-dir", str(tmp_path / "c")),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        "wagi: error: engine 'wasmer' (requested explicitly) cannot serve gunicorn's gthread "
        "worker (--worker-class sync, --threads 2)"
    )


# -- the worker's folder of transient files --------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_a_worker_whose_transient_folder_was_removed_is_replaced(
    server_factory: Callable[..., Server], engine: str
) -> None:
    """Spooled bodies and scratch directories live in the worker's folder, and the kernel wall
    grants that very directory: a tmp cleaner that removes it takes the worker out of service,
    so it is replaced, and the new worker makes a folder of its own."""
    server = server_factory(PROBE_ROUTE, engine, workers=1)
    assert server.get("/p?hdr&print=hi").text == "hi\n"
    [worker] = booted_workers(server.log())
    folder = Path(tempfile.gettempdir()) / f"wagi-scratch-{os.getuid()}" / f"w{worker}"
    assert folder.is_dir()
    shutil.rmtree(folder)
    r = server.get("/p?hdr&print=hi")
    assert (r.status_code, r.text) == (503, UNFIT)
    wait_for(lambda: len(booted_workers(server.log())) == 2, "a new worker")
    wait_for(lambda: server.get("/healthz").status_code == 200, "the new worker")
    body = b"x" * (2 << 20)  # spooled, into the new worker's folder
    r = server.post("/p?hdr&cat", data=body)
    assert (r.status_code, r.content) == (200, body)
    assert (
        f"wagi: worker {worker} can no longer run modules: its folder of transient files "
        f"({folder}) was removed" in server.log()
    )
