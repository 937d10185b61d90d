"""Hot reload keeps the last good module (docs/reliability.md).

A module file replaced while serving is served once it loads and passes the start-up
checks; until then its route keeps serving the last version that did, the problem is
logged once per version, and the file is not compiled again until it changes.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.support.servers import ENGINES, Server
from tests.support.workers import booted_workers, wait_for
from wagi.execution import landlock

GOOD = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\\n\\n{text}\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {length}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def good(text: str) -> str:
    return GOOD.format(text=text, length=len(f"Content-Type: text/plain\n\n{text}\n"))


NO_ENTRYPOINT = '(module (memory (export "memory") 1) (func (export "other")))'
NOT_WEBASSEMBLY = "\0asm\x01\0\0\0 half a module"
UNKNOWN_IMPORT = (
    '(module (import "somewhere" "else" (func)) (memory (export "memory") 1) '
    '(func (export "_start")))'
)


def replace(path: Path, text: str) -> None:
    """Write a new version with a new identity (mtime and inode)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)
    time.sleep(0.01)


CANNOT_SERVE = "this version of the module file cannot be served"


def test_a_replaced_module_is_checked_like_at_start_up(
    server_factory: Callable[..., Server], engine: str, tmp_path: Path
) -> None:
    module = tmp_path / "m.wat"
    module.write_text(good("one"))
    server = server_factory(f'[[module]]\nroute = "/m"\nmodule = "{module}"\n', engine, workers=1)
    assert server.get("/m").text == "one\n"

    replace(module, NO_ENTRYPOINT)
    for _ in range(3):  # the last good version, and one log line for this version
        r = server.get("/m")
        assert (r.status_code, r.text) == (200, "one\n")
    log = server.log()
    assert log.count(CANNOT_SERVE) == 1
    assert (
        f"{module}: {CANNOT_SERVE} (the module exports no function '_start'; it is not served "
        "until it does); its routes keep serving the last version that could, until the file "
        "changes again" in log
    )

    replace(module, UNKNOWN_IMPORT)
    assert server.get("/m").text == "one\n"
    assert server.log().count(CANNOT_SERVE) == 2
    assert "somewhere" in server.log()

    replace(module, good("two"))
    assert server.get("/m").text == "two\n"
    assert f"{module}: a new version of the module file is served" in server.log()
    assert server.get("/healthz").status_code == 200

    # A worker that starts while the file is bad never had a good version: 500, as before.
    replace(module, NOT_WEBASSEMBLY)
    [worker] = booted_workers(server.log())
    os.kill(worker, signal.SIGTERM)
    wait_for(lambda: len(booted_workers(server.log())) == 2, "a new worker")
    wait_for(lambda: server.get("/healthz").status_code == 200, "the new worker")
    r = server.get("/m")
    assert (r.status_code, r.text) == (
        500,
        "500 Internal Server Error: the module could not be loaded\n",
    )
    replace(module, good("three"))
    assert server.get("/m").text == "three\n"


def under_load(
    server: Server, path: str, clients: int, stop: threading.Event
) -> tuple[list[Answer], list[threading.Thread]]:
    """Start ``clients`` threads that GET ``path`` back to back until ``stop``; every
    answer (time received, status, body; status 0 and the error) lands in the list."""
    answers: list[Answer] = []

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.get(server.url + path, timeout=30)
                    answers.append((time.monotonic(), r.status_code, r.text))
                except requests.RequestException as exc:
                    answers.append((time.monotonic(), 0, repr(exc)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return answers, threads


Answer = tuple[float, int, str]


@pytest.mark.parametrize(
    ("engine", "volume"),
    [
        (engine, volume)
        for engine in ENGINES
        for volume in (False, True)
        # wasmer serves volumes only behind the kernel wall, on threads of the route's own
        if not (volume and engine == "wasmer" and not landlock.availability().ok)
    ],
)
def test_a_bad_version_never_interrupts_the_route_under_load(
    server_factory: Callable[..., Server], tmp_path: Path, engine: str, volume: bool
) -> None:
    module = tmp_path / "m.wat"
    module.write_text(good("one"))
    config = f'[[module]]\nroute = "/m"\nmodule = "{module}"\n'
    if volume:
        (tmp_path / "data").mkdir()
        config += f'volumes = {{{{ "/data" = "{tmp_path / "data"}" }}}}\n'
    server = server_factory(config, engine, workers=1)
    assert server.get("/m").text == "one\n"
    stop = threading.Event()
    answers, clients = under_load(server, "/m", 3, stop)
    try:
        time.sleep(1)
        bad_from = time.monotonic()
        for bad in (NOT_WEBASSEMBLY, NO_ENTRYPOINT, UNKNOWN_IMPORT):
            replace(module, bad)
            time.sleep(1)
        good_from = time.monotonic()
        replace(module, good("two"))
        time.sleep(3)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    failures = [a for a in answers if (a[1], a[2]) not in ((200, "one\n"), (200, "two\n"))]
    assert not failures, f"{len(failures)} of {len(answers)} answers failed: {failures[:3]}"
    while_bad = [text for at, _, text in answers if bad_from < at < good_from]
    assert len(while_bad) > 10 and set(while_bad) == {"one\n"}
    # The new version is served within a couple of seconds of appearing (wide margin).
    late = [text for at, _, text in answers if at > good_from + 2]
    assert len(late) > 10 and set(late) == {"two\n"}
    # Each bad version logged once (and so compiled once), however many requests it met.
    log = server.log()
    assert log.count(CANNOT_SERVE) == 3, log
    assert re.search(r"cannot load|could not be loaded", log) is None
