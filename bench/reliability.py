#!/usr/bin/env python3
"""Reliability under load: good, hostile and malformed requests at once, on every engine.

Usage::

    python bench/reliability.py [--engine all|wasmer|wasmtime] [--seconds 60]
                                [--connections 64] [--workers 2] [--quick] [--json FILE]

For each engine it starts a real ``gunicorn wagi.wsgi:app`` on 127.0.0.1 (2
workers) and, for ``--seconds`` (60; ``--quick``: 10 s at 16 connections),
keeps ``--connections`` clients busy with a mix of

- good requests: ``GET /hello`` and ``POST /echo`` with a random body, whose
  answers must be exact, byte for byte;
- hostile modules: an infinite loop (its timeout), a memory bomb that grows
  until refused (``max_memory``), a 1 GiB writer (``--max-response``), header
  smugglers (CR and NUL in values, ``Status: 100``, ``Transfer-Encoding`` and
  ``Content-Length`` from the module, a body that looks like a second
  response), a stdin over-reader and a file-system escaper (``..``, absolute
  paths, a symlink out of its volume);
- malformed requests: bad percent-encoding, ``%00`` in the path, huge and too
  many headers, chunked bodies (valid and invalid), a body without
  Content-Length, both Content-Length and Transfer-Encoding, junk request lines.

Every answer is checked against what the documentation promises for it. The
expensive hostile requests are rationed (the loop and the 1 GiB writer are
never more than one at a time) so that they test the server rather than
saturate it. It prints one table per engine: per category the count, the share
answered as documented, connection errors and latency percentiles; then the
workers' RSS before and after (and the highest seen), worker restarts
("Booting worker" lines) and tracebacks in the server log.

Only 127.0.0.1 is contacted; every loop is bounded in time; servers are always
stopped. Exit status 1 if a good request was not answered exactly or met a
connection error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

from run import HOST, Server, memory_kib, percentile  # noqa: E402

from tests.support.wat import WatModule  # noqa: E402
from wagi.engines import ENGINE_NAMES, importable  # noqa: E402

PROBE = ROOT / "tests" / "modules" / "probe.wasm"
HEAD = "Content-Type: text/plain\n\n"
MAX_RESPONSE = 8 << 20
"""--max-response for the run: the 1 GiB writer is stopped here."""
LOOP_TIMEOUT = 0.5
SECRET = b"TOP SECRET, never served"
REQUEST_TIMEOUT = 60.0


def error_body(status: str, message: str) -> bytes:
    return f"{status}: {message}\n".encode()


INVALID_CGI = error_body("500 Internal Server Error", "the module's response was not valid CGI")
TOO_LARGE = error_body("500 Internal Server Error", "the module's response was too large")
TIMED_OUT = error_body("504 Gateway Timeout", "the module timed out")
NUL_PATH = error_body("400 Bad Request", "the path holds a NUL byte (%00)")


# --------------------------------------------------------------------------- HTTP on raw sockets


@dataclass
class Reply:
    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool
    """False when the body was cut: a chunked body without its last chunk, or short of its
    Content-Length."""

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def parse_reply(raw: bytes) -> Reply:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0]) if lines else None
    if not sep or match is None:
        return Reply(None, [], b"", False)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    reply = Reply(int(match.group(1)), headers, rest, True)
    if any(v.lower() == "chunked" for v in reply.header("Transfer-Encoding")):
        body, complete = bytearray(), False
        while True:
            size_line, found, rest = rest.partition(b"\r\n")
            if not found:
                break
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                complete = rest.startswith(b"\r\n")
                break
            if len(rest) < size + 2:
                body += rest[:size]
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        reply.body, reply.complete = bytes(body), complete
    elif reply.header("Content-Length"):
        length = int(reply.header("Content-Length")[0])
        reply.body, reply.complete = rest[:length], len(rest) >= length
    return reply


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection((HOST, port), timeout=REQUEST_TIMEOUT) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(request)  # the server may answer (and close) before reading it all
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def http(
    method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None and not any(k.lower() == "transfer-encoding" for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(body: bytes, rng: random.Random) -> bytes:
    out, at = bytearray(), 0
    while at < len(body):
        size = rng.randint(1, 4096)
        piece = body[at : at + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        at += size
    return bytes(out + b"0\r\n\r\n")


# ---------------------------------------------------------------- what is sent, what is due

Check = Callable[[Reply], str | None]
"""``None`` if the reply is the documented one, else what was wrong."""


@dataclass
class Category:
    name: str
    kind: str  # good, hostile, malformed
    weight: int
    make: Callable[[random.Random], tuple[bytes, Check]]
    max_in_flight: int = 0
    """At most this many at once (0: no bound): the costly hostile requests are rationed."""
    min_interval: float = 0.0
    """Seconds between two starts of this category."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    last_start: float = 0.0

    def try_start(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if self.max_in_flight and self.in_flight >= self.max_in_flight:
                return False
            if self.min_interval and now - self.last_start < self.min_interval:
                return False
            self.in_flight += 1
            self.last_start = now
            return True

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1


def exactly(status: int, body: bytes) -> Check:
    def check(reply: Reply) -> str | None:
        if (reply.status, reply.body, reply.complete) != (status, body, True):
            return f"{reply.status} {reply.body[:60]!r} (complete={reply.complete})"
        return None

    return check


def client_error(reply: Reply) -> str | None:
    if reply.status is None or not 400 <= reply.status < 500:
        return f"{reply.status} {reply.body[:60]!r}"
    return None


def categories(fs_secret_path: Path) -> list[Category]:
    def hello(rng: random.Random) -> tuple[bytes, Check]:
        return http("GET", "/hello"), exactly(200, b"Hello, world!\n")

    def echo(rng: random.Random) -> tuple[bytes, Check]:
        body = rng.randbytes(rng.randint(0, 16384))
        request = http("POST", "/echo", body, {"Content-Type": "application/octet-stream"})
        return request, exactly(200, body)

    def loop(rng: random.Random) -> tuple[bytes, Check]:
        return http("GET", "/loop?loop"), exactly(504, TIMED_OUT)

    def bomb(rng: random.Random) -> tuple[bytes, Check]:
        return http("GET", "/bomb"), exactly(200, b"refused\n")

    def flood(rng: random.Random) -> tuple[bytes, Check]:
        def check(reply: Reply) -> str | None:
            if (reply.status, reply.body, reply.complete) == (500, TOO_LARGE, True):
                return None  # stopped before any byte was sent
            if reply.status == 200 and not reply.complete and len(reply.body) <= MAX_RESPONSE:
                return None  # streaming had begun: the body is cut, never ended cleanly
            return f"{reply.status}, {len(reply.body)} bytes, complete={reply.complete}"

        return http("GET", "/flood"), check

    def smuggle(rng: random.Random) -> tuple[bytes, Check]:
        variant = rng.choice(["cr", "nul", "100", "te", "split"])

        def cr(reply: Reply) -> str | None:
            ok = reply.status == 200 and reply.body == b"body" and not reply.header("Injected")
            return None if ok else f"{reply.status} {reply.headers}"

        def te(reply: Reply) -> str | None:
            ok = (
                (reply.status, reply.body, reply.complete) == (200, b"hello world", True)
                and reply.header("Content-Length") == ["11"]
                and not reply.header("Transfer-Encoding")
            )
            return None if ok else f"{reply.status} {reply.headers} {reply.body[:40]!r}"

        checks: dict[str, Check] = {
            "cr": cr,
            "nul": exactly(500, INVALID_CGI),
            "100": exactly(500, INVALID_CGI),
            "te": te,
            "split": exactly(200, SPLIT_BODY),
        }
        return http("GET", f"/smuggle/{variant}"), checks[variant]

    def overread(rng: random.Random) -> tuple[bytes, Check]:
        body = rng.randbytes(rng.randint(1, 4096))
        target = "/probe?hdr&read=1048576&read=1048576&read=1048576"
        return http("POST", target, body), exactly(200, body)

    def escape(rng: random.Random) -> tuple[bytes, Check]:
        ops = rng.choice(
            [
                "readfile=/data/../secret.txt",
                f"readfile={fs_secret_path}",
                "readfile=/data/link-out",
                "readfile=/data/dir-out/secret.txt",
                "ls=/data/..",
                "ls=/",
                f"symlink={fs_secret_path.parent}:/data/new-link&readfile=/data/new-link/secret.txt",
                "writefile=/data/../planted.txt:x",
            ]
        )

        def check(reply: Reply) -> str | None:
            if reply.status != 200 or SECRET in reply.body or b"secret.txt" in reply.body:
                return f"{reply.status} {reply.body[:80]!r}"
            if (fs_secret_path.parent.parent / "planted.txt").exists():
                return "a file was written outside the volume"
            return None

        return http("GET", f"/fs?hdr&{ops}"), check

    def bad_percent(rng: random.Random) -> tuple[bytes, Check]:
        path = rng.choice(["/probe/%zz", "/probe/%", "/probe/a%2", "/probe/%C3%28", "/probe/%%41"])
        return http("GET", path + "?hdr&print=ok"), exactly(200, b"ok\n")

    def nul(rng: random.Random) -> tuple[bytes, Check]:
        path = rng.choice(["/probe/a%00b", "/probe/%00", "/probe/x.txt%00.html"])
        return http("GET", path + "?hdr&print=ok"), exactly(400, NUL_PATH)

    def huge_headers(rng: random.Random) -> tuple[bytes, Check]:
        if rng.random() < 0.5:
            headers = {"X-Big": "a" * rng.randint(9000, 70000)}  # past limit_request_field_size
        else:
            headers = {f"X-H{i}": "v" for i in range(rng.randint(101, 400))}  # past 100 fields
        return http("GET", "/hello", headers=headers), client_error

    def chunked_body(rng: random.Random) -> tuple[bytes, Check]:
        body = rng.randbytes(rng.randint(1, 20000))
        headers = {"Transfer-Encoding": "chunked", "Content-Type": "application/octet-stream"}
        return http("POST", "/echo", chunked(body, rng), headers), exactly(200, body)

    def bad_chunked(rng: random.Random) -> tuple[bytes, Check]:
        broken = rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc\r\n0\r\n\r\n", b"-1\r\n\r\n"])
        headers = {"Transfer-Encoding": "chunked"}
        return http("POST", "/echo", broken, headers), client_error

    def no_length(rng: random.Random) -> tuple[bytes, Check]:
        # No Content-Length, no chunking: HTTP/1.1 says there is no body (RFC 9112 6.3).
        request = http("POST", "/echo", None, {"Content-Type": "text/plain"}) + b"stray bytes"
        return request, exactly(200, b"")

    def both_lengths(rng: random.Random) -> tuple[bytes, Check]:
        headers = {"Content-Length": "5", "Transfer-Encoding": "chunked"}
        return http("POST", "/echo", b"5\r\nhello\r\n0\r\n\r\n", headers), client_error

    def junk_line(rng: random.Random) -> tuple[bytes, Check]:
        request = rng.choice(
            [
                b"GARBAGE\r\n\r\n",
                b"GET /hello HTTP/1.1 extra\r\nHost: x\r\n\r\n",
                b"GET /hello HTTP/9.9\r\nHost: x\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                b"GET " + b"/a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            ]
        )
        return request, client_error

    return [
        Category("hello", "good", 30, hello),
        Category("echo (random body)", "good", 30, echo),
        Category("infinite loop", "hostile", 2, loop, max_in_flight=1, min_interval=1.0),
        Category("memory bomb", "hostile", 2, bomb, max_in_flight=2),
        Category("1 GiB writer", "hostile", 1, flood, max_in_flight=1, min_interval=0.5),
        Category("header smuggler", "hostile", 4, smuggle),
        Category("stdin over-reader", "hostile", 3, overread),
        Category("FS escaper", "hostile", 3, escape),
        Category("bad percent-encoding", "malformed", 3, bad_percent),
        Category("NUL in path", "malformed", 3, nul),
        Category("huge headers", "malformed", 2, huge_headers),
        Category("chunked body", "malformed", 3, chunked_body),
        Category("bad chunked body", "malformed", 2, bad_chunked),
        Category("body, no Content-Length", "malformed", 2, no_length),
        Category("Content-Length + chunked", "malformed", 2, both_lengths),
        Category("junk request line", "malformed", 3, junk_line),
    ]


SPLIT_BODY = b"HTTP/1.1 200 OK\r\nInjected: yes\r\nContent-Length: 0\r\n\r\n"
"""A body that looks like a second response: it must arrive as body bytes, framed."""


# --------------------------------------------------------------------------- the server's files


def write_modules(tmp: Path, engine: str) -> tuple[Path, Path]:
    """modules.toml and the hostile modules; returns (config, path of the secret)."""
    modules = tmp / "modules"
    modules.mkdir()
    outside = tmp / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(SECRET + b"\n")
    data = tmp / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hello from the volume\n")
    os.symlink(secret, data / "link-out")
    os.symlink(outside, data / "dir-out")

    bomb = WatModule()
    bomb.steps.append(  # grow 1 MiB at a time until memory.grow says no
        "(block $refused (loop $grow\n"
        "      (br_if $refused (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))\n"
        "      (br $grow)))"
    )
    bomb.print(HEAD + "refused\n")
    smugglers = {
        "cr": b"Content-Type: text/plain\nX-A: a\rInjected: yes\n\nbody",
        "nul": b"Content-Type: text/plain\nX-A: a\x00b\n\nbody",
        "100": b"Status: 100 Continue\nContent-Type: text/plain\n\nbody",
        "te": b"Content-Type: text/plain\nTransfer-Encoding: chunked\nContent-Length: 5\n\n"
        b"hello world",
        "split": b"Content-Type: text/plain\r\n\r\n" + SPLIT_BODY,
    }
    wat = {
        "bomb": bomb,
        "flood": WatModule().print(HEAD).flood(1 << 30),
        **{f"smuggle-{k}": WatModule().print(v) for k, v in smugglers.items()},
    }
    for name, module in wat.items():
        (modules / f"{name}.wat").write_text(module.text())

    # wasmer maps no volumes (it cannot confine them): its escaper has none to escape from.
    volumes = f'volumes = {{ "/data" = "{data}" }}\n' if engine == "wasmtime" else ""
    entries = [
        ("/hello", ROOT / "samples" / "hello.wat", ""),
        ("/echo", ROOT / "samples" / "echo.wasm", ""),
        ("/probe/...", PROBE, ""),
        ("/loop", PROBE, f"timeout = {LOOP_TIMEOUT}\n"),
        ("/bomb", modules / "bomb.wat", 'max_memory = "16 MiB"\n'),
        ("/flood", modules / "flood.wat", ""),
        ("/fs", PROBE, volumes),
        *((f"/smuggle/{k}", modules / f"smuggle-{k}.wat", "") for k in smugglers),
    ]
    config = tmp / "modules.toml"
    config.write_text(
        "\n".join(
            f'[[module]]\nroute = "{route}"\nmodule = "{path}"\n{extra}'
            for route, path, extra in entries
        )
    )
    return config, secret


# --------------------------------------------------------------------------- the run


@dataclass
class Tally:
    sent: int = 0
    as_documented: int = 0
    wrong: int = 0
    connection_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_wrong: str = ""


@dataclass
class EngineRun:
    engine: str
    seconds: float
    connections: int
    tallies: dict[str, Tally]
    kinds: dict[str, str]
    rss_before_kib: dict[int, int]
    rss_after_kib: dict[int, int]
    rss_peak_kib: int
    restarts: int
    tracebacks: int
    """Tracebacks in the server log other than ResponseCut (counted in ``cuts``)."""
    cuts: int
    """Responses cut mid-stream on purpose (gunicorn logs each with a traceback)."""

    @property
    def good_failures(self) -> int:
        return sum(
            t.wrong + t.connection_errors
            for name, t in self.tallies.items()
            if self.kinds[name] == "good"
        )


def worker_rss(server: Server) -> dict[int, int]:
    return {pid: memory_kib(pid)["rss"] for pid in server.worker_pids()}


def run_engine(engine: str, args: argparse.Namespace) -> EngineRun:
    with tempfile.TemporaryDirectory(prefix="wagi-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        config, secret = write_modules(tmp, engine)
        server = Server(engine, args.workers, tmp)
        server.env |= {
            "WAGI_CONFIG": str(config),
            "WAGI_MAX_RESPONSE": str(MAX_RESPONSE),
            "WAGI_TIMEOUT": "10",
        }
        cats = categories(secret)
        tallies = {c.name: Tally() for c in cats}
        try:
            server.start()
            warm_up(server.port, cats)
            booted = server.log_path.read_text(errors="replace").count("Booting worker")
            rss_before = worker_rss(server)
            peak = load(server, cats, tallies, args)
            time.sleep(1)  # let the last replaced worker finish booting
            rss_after = worker_rss(server)
            log = server.log_path.read_text(errors="replace")
        finally:
            server.stop()
        if args.keep_log:
            Path(args.keep_log).with_suffix(f".{engine}.log").write_text(log)
    return EngineRun(
        engine=engine,
        seconds=args.seconds,
        connections=args.connections,
        tallies=tallies,
        kinds={c.name: c.kind for c in cats},
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        rss_peak_kib=max(peak, *rss_before.values(), *rss_after.values()),
        restarts=log.count("Booting worker") - booted,
        tracebacks=log.count("Traceback (most recent call last)") - cuts(log),
        cuts=cuts(log),
    )


def cuts(log: str) -> int:
    return log.count("wagi.server.gateway.ResponseCut: ")


def warm_up(port: int, cats: list[Category]) -> None:
    """One of each good request, so that the first measured ones pay no start-up cost."""
    rng = random.Random(0)
    for category in cats:
        if category.kind == "good":
            request, check = category.make(rng)
            problem = check(parse_reply(exchange(port, request)))
            if problem:
                raise RuntimeError(f"warm-up {category.name}: {problem}")


def load(
    server: Server, cats: list[Category], tallies: dict[str, Tally], args: argparse.Namespace
) -> int:
    """``args.connections`` clients for ``args.seconds``; returns the highest worker RSS seen."""
    deadline = time.monotonic() + args.seconds
    good = [c for c in cats if c.kind == "good"]
    lock = threading.Lock()
    peak = 0

    def client(number: int) -> None:
        rng = random.Random(args.seed * 1000 + number)
        while time.monotonic() < deadline:
            category = rng.choices(cats, weights=[c.weight for c in cats])[0]
            if not category.try_start():
                category = rng.choice(good)
                category.try_start()
            try:
                request, check = category.make(rng)
                started = time.monotonic()
                try:
                    raw = exchange(server.port, request)
                except OSError as exc:
                    raw, problem = None, f"{type(exc).__name__}: {exc}"
                elapsed = (time.monotonic() - started) * 1000
                if raw is not None:
                    problem = check(parse_reply(raw)) if raw else "closed without an answer"
            finally:
                category.done()
            with lock:
                tally = tallies[category.name]
                tally.sent += 1
                tally.latencies_ms.append(elapsed)
                if raw is None:
                    tally.connection_errors += 1
                    tally.first_wrong = tally.first_wrong or (problem or "")
                elif problem:
                    tally.wrong += 1
                    tally.first_wrong = tally.first_wrong or problem
                else:
                    tally.as_documented += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.connections)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, *worker_rss(server).values(), 0)
        time.sleep(0.5)
    return peak


# --------------------------------------------------------------------------- report


def print_run(run: EngineRun) -> None:
    print(
        f"\n## {run.engine}: {run.seconds:g} s, {run.connections} connections, "
        f"{sum(t.sent for t in run.tallies.values())} requests"
    )
    print(
        "\n| kind | category | sent | as documented | wrong | conn. errors | "
        "p50 ms | p90 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, tally in run.tallies.items():
        lat = sorted(tally.latencies_ms)
        print(
            f"| {run.kinds[name]} | {name} | {tally.sent} | {tally.as_documented} | "
            f"{tally.wrong} | {tally.connection_errors} | {percentile(lat, 50):.1f} | "
            f"{percentile(lat, 90):.1f} | {percentile(lat, 99):.1f} |"
        )
    before = sum(run.rss_before_kib.values()) / 1024
    after = sum(run.rss_after_kib.values()) / 1024
    print(
        f"\nworker RSS: before {before:.1f} MiB ("
        + ", ".join(f"{v / 1024:.1f}" for v in run.rss_before_kib.values())
        + f"), after {after:.1f} MiB ("
        + ", ".join(f"{v / 1024:.1f}" for v in run.rss_after_kib.values())
        + f"); highest one worker: {run.rss_peak_kib / 1024:.1f} MiB"
    )
    print(
        f"worker restarts: {run.restarts}; responses cut mid-stream: {run.cuts}; "
        f"other tracebacks in the log: {run.tracebacks}"
    )
    for name, tally in run.tallies.items():
        if tally.first_wrong:
            print(f"first problem, {name}: {tally.first_wrong}")
    verdict = "OK" if run.good_failures == 0 else f"FAILED ({run.good_failures})"
    print(f"good requests answered exactly, no connection errors: {verdict}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="all", choices=["all", *ENGINE_NAMES])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="10 s at 16 connections")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep-log", help="keep each server's log as FILE.<engine>.log")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.connections = 10.0, 16
    if not 0 < args.seconds <= 600 or not 0 < args.connections <= 256:
        parser.error("--seconds must be in (0, 600] and --connections in (0, 256]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = ENGINE_NAMES if args.engine == "all" else (args.engine,)
    engines = [name for name in names if importable(name)[0]]
    if not engines:
        print(f"no engine available among {', '.join(names)}", file=sys.stderr)
        return 2
    print(f"# wagi reliability run, CPython {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    runs = []
    for engine in engines:
        run = run_engine(engine, args)
        print_run(run)
        runs.append(run)
    if args.json:
        Path(args.json).write_text(json.dumps([summary(r) for r in runs], indent=2))
    return 0 if all(r.good_failures == 0 for r in runs) else 1


def summary(run: EngineRun) -> dict[str, object]:
    return {
        "engine": run.engine,
        "seconds": run.seconds,
        "connections": run.connections,
        "categories": {
            name: {
                "kind": run.kinds[name],
                "sent": t.sent,
                "as_documented": t.as_documented,
                "wrong": t.wrong,
                "connection_errors": t.connection_errors,
                "p50_ms": percentile(sorted(t.latencies_ms), 50),
                "p99_ms": percentile(sorted(t.latencies_ms), 99),
                "first_wrong": t.first_wrong,
            }
            for name, t in run.tallies.items()
        },
        "rss_before_kib": run.rss_before_kib,
        "rss_after_kib": run.rss_after_kib,
        "rss_peak_kib": run.rss_peak_kib,
        "restarts": run.restarts,
        "tracebacks": run.tracebacks,
        "cuts": run.cuts,
    }


if __name__ == "__main__":
    sys.exit(main())
