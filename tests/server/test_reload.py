"""Reloads under load and graceful stops: what ``systemctl reload`` and ``stop`` do to traffic.

A bounded load (a few client threads on loopback, each request on a fresh connection, as
nginx does with gunicorn's sync workers) runs while the gunicorn master gets ``HUP`` three
times: with the same configuration, with the route pointed at another module, and with a
configuration that does not check. Not one request may fail.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..support.servers import PROBE, Server, split_response, start_gunicorn, write_config
from ..support.workers import booted_workers, exited_workers

WORKERS = 2
# Safety bounds for the load: it normally stops long before either.
MAX_REQUESTS = 50_000
MAX_SECONDS = 120.0


def greeting_module(path: Path, text: str) -> Path:
    """A WAT module answering ``text`` (samples/hello.wat with another string)."""
    response = f"Content-Type: text/plain\\n\\n{text}\\n"
    length = len(f"Content-Type: text/plain\n\n{text}\n")
    path.write_text(
        f"""(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{response}")
  (func (export "_start")
    (local $rest i32) (local $ptr i32)
    (local.set $ptr (i32.const 16))
    (local.set $rest (i32.const {length}))
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $rest)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $rest))
        (br_if $done (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
        (local.set $rest (i32.sub (local.get $rest) (i32.load (i32.const 8))))
        (br $again)))))
"""
    )
    return path


@dataclass
class Load:
    """Client threads sending ``GET path`` until stopped; every outcome is kept."""

    port: int
    path: str
    threads: int = 4
    outcomes: list[tuple[int, str] | str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, args=(deadline,), daemon=True)
            thread.start()
            self._workers.append(thread)

    def _run(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                conn.request("GET", self.path)
                response = conn.getresponse()
                outcome: tuple[int, str] | str = (response.status, response.read().decode())
                conn.close()
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.outcomes.append(outcome)
                if len(self.outcomes) >= MAX_REQUESTS:
                    self._stop.set()

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, more: int) -> None:
        """Until ``more`` further requests have been answered."""
        target = self.count() + more
        while self.count() < target and not self._stop.is_set():
            time.sleep(0.01)

    def stop(self) -> list[tuple[int, str] | str]:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=90)
        return self.outcomes


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def live_workers(server: Server) -> set[int]:
    """The workers booted and not exited, as the log says (not the process table)."""
    log = server.log()
    return set(booted_workers(log)) - exited_workers(log)


def hup_and_wait_for_new_workers(server: Server) -> None:
    """HUP, then wait until every live worker was booted after it and the old ones are gone."""
    before = set(booted_workers(server.log()))
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while True:
        live = live_workers(server)
        if len(live) == WORKERS and not live & before:
            return
        assert time.monotonic() < deadline, server.log()[-4000:]
        time.sleep(0.05)


def test_reloads_under_load_drop_nothing(tmp_path: Path, engine: str) -> None:
    one = greeting_module(tmp_path / "one.wat", "version one")
    two = greeting_module(tmp_path / "two.wat", "version two")
    config = write_config(tmp_path, f'[[module]]\nroute = "/greet"\nmodule = "{one.name}"\n')
    server = start_gunicorn(tmp_path, config, engine, workers=WORKERS)
    load = Load(port_of(server), "/greet")
    try:
        load.start()
        load.wait_for(100)

        # 1. The same configuration: every worker replaced.
        hup_and_wait_for_new_workers(server)
        load.wait_for(100)

        # 2. The route now points at another module.
        config.write_text(config.read_text().replace(one.name, two.name))
        hup_and_wait_for_new_workers(server)
        load.wait_for(100)

        # 3. A configuration that does not check: refused, the workers of step 2 go on.
        workers_before = live_workers(server)
        config.write_text(config.read_text().replace(two.name, "missing.wat"))
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while "reload refused" not in server.log():
            assert time.monotonic() < deadline, server.log()[-4000:]
            time.sleep(0.05)
        load.wait_for(100)
        outcomes = load.stop()

        failures = [o for o in outcomes if isinstance(o, str) or o[0] != 200]
        assert not failures, Counter(map(str, failures)).most_common(5)
        bodies = Counter(o[1] for o in outcomes if not isinstance(o, str))
        assert set(bodies) == {"version one\n", "version two\n"}, bodies
        # Once step 2's workers took over, only the new module answered.
        last = [o[1] for o in outcomes[-100:] if not isinstance(o, str)]
        assert set(last) == {"version two\n"}
        assert "wagi: reload refused, the workers keep the previous configuration" in server.log()
        assert "key 'module': module file 'missing.wat'" in server.log()
        assert live_workers(server) == workers_before
        for _ in range(10):
            assert server.get("/greet").text == "version two\n"
        assert server.process.poll() is None
    finally:
        load.stop()
        server.stop()


def accepted(port: int) -> bool:
    """Whether the listening socket on ``port`` has no connection waiting to be accepted."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            # For a listening socket, rx_queue is the accept queue's length.
            return int(queues.split(":")[1], 16) == 0
    raise AssertionError(f"nothing listens on port {port}")


def test_a_graceful_stop_lets_the_request_in_flight_finish(tmp_path: Path, engine: str) -> None:
    config = write_config(tmp_path, f'[[module]]\nroute = "/probe"\nmodule = "{PROBE}"\n')
    server = start_gunicorn(tmp_path, config, engine, workers=1)
    port = port_of(server)
    client = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        client.sendall(
            b"GET /probe?hdr&sleep=1500&print=done HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        # The worker has taken the connection: from now on the request is in flight.
        deadline = time.monotonic() + 30
        while not accepted(port):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        response = b"".join(chunks)
        head, body = split_response(response)  # a module that ran 1.5 s streams its body
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), response
        assert body == b"done\n"
        assert server.process.wait(timeout=30) == 0
        assert "Handling signal: term" in server.log()
    finally:
        client.close()
        server.stop()
