#!/usr/bin/env python3
"""HTTP benchmark of wagi: real gunicorn servers, real modules, real engines.

Usage::

    python bench/run.py [--engine auto|wasmer|wasmtime|all] [--requests N]
                        [--concurrency C] [--workers W] [--loadgen python|wrk]

For each engine it starts ``python -m gunicorn wagi.wsgi:app -c bench/gunicorn.conf.py``
(the settings of ``gunicorn.conf.py``) from the repository root with
``bench/modules.toml``, waits for ``/healthz``,
and loads it with, in this order:

- ``GET /healthz``: the baseline. Same server, same HTTP path, no module run;
- ``GET /hello``: a module written in WebAssembly text (samples/hello.wat);
- ``GET /env/x?a=1``: a C module that prints its argv and environment;
- ``POST /echo``: a C module that sends back a 16 KiB body;
- ``GET /healthz`` again: the difference from the first shows the run's noise.

It prints, per endpoint: requests/s, latency percentiles, the per-request
overhead against the baseline (difference of the medians), and the CPU time the
server's processes spent per request (from /proc, so the load generator's own
CPU is not counted); then the memory of every worker (RSS, PSS, USS) at start,
after warm-up and after the load. The servers are always stopped at the end.

The default load generator is this script: Python threads, each with its own
``http.client`` connection, ``--requests`` requests per endpoint in all, each
endpoint bounded by ``--max-seconds``. ``--loadgen wrk`` uses ``wrk`` (Debian
package ``wrk``) for ``--wrk-seconds`` per endpoint instead. Only 127.0.0.1 is
ever contacted. ``bench/engine_overhead.py`` (the engine alone, no HTTP) runs
after each server has stopped, in a fresh process, unless ``--no-micro``.

``bench/compare.py`` imports the pieces of this script (:class:`Server`, the load
generators, the /proc readings, the scenarios) to compare wagi with a plain WSGI
app and with classic CGI.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import wagi  # noqa: E402
from wagi.config import load_config  # noqa: E402
from wagi.engines import ENGINE_NAMES, importable  # noqa: E402
from wagi.execution.engine_choice import choose_engine  # noqa: E402

HOST = "127.0.0.1"
CONFIG = "bench/modules.toml"
GUNICORN_CONF = "bench/gunicorn.conf.py"
STARTUP_SECONDS = 90.0
REQUEST_TIMEOUT = 30.0
ECHO_BODY = bytes(range(256)) * 64
"""16 KiB, every byte value: the echo module must send back exactly this."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    label: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: Callable[[bytes], bool] = lambda data: True
    """Whether a 200 response's body is the right one."""
    content_type: str | None = None
    """The Content-Type the answer must have (checked once, before the load)."""


def _env_sample_body() -> re.Pattern[bytes]:
    """What ``samples/env.wasm`` prints for ``GET /env/x?a=1`` sent by ``http.client``.

    Every line is exact except the client's port and the server's port, which
    change from run to run, and the request id, when there is one.
    """
    port, host = b"\x00PORT\x00", b"127.0.0.1:\x00PORT\x00"
    lines = [
        b"argv[0] = /env",
        b"argv[1] = a=1",
        b"AUTH_TYPE=",
        b"CONTENT_LENGTH=0",
        b"CONTENT_TYPE=",
        b"GATEWAY_INTERFACE=CGI/1.1",
        b"GREETING=hello from modules.toml",
        b"HTTP_ACCEPT_ENCODING=identity",
        b"HTTP_HOST=" + host,
        b"PATH_INFO=/x",
        b"PATH_TRANSLATED=/x",
        b"QUERY_STRING=a=1",
        b"REMOTE_ADDR=127.0.0.1",
        b"REMOTE_HOST=127.0.0.1",
        b"REMOTE_PORT=" + port,
        b"REMOTE_USER=",
        b"REQUEST_METHOD=GET",
        b"REQUEST_URI=/env/x?a=1",
        b"SCRIPT_NAME=/env",
        b"SERVER_NAME=127.0.0.1",
        b"SERVER_PORT=" + port,
        b"SERVER_PROTOCOL=HTTP/1.1",
        b"SERVER_SOFTWARE=WAGI/" + wagi.__version__.encode(),
        b"X_FULL_URL=http://" + host + b"/env/x?a=1",
        b"X_MATCHED_ROUTE=/env/...",
        b"X_RAW_PATH_INFO=/x",
    ]
    text = re.escape(b"\n".join(lines) + b"\n").replace(re.escape(port), rb"\d+")
    # X_REQUEST_ID: only when request ids are on; its value differs per request.
    return re.compile(text + rb"(?:X_REQUEST_ID=[!-~]+\n)?")


HELLO_BODY = b"Hello, world!\n"
"""The body of every hello contender: samples/hello.wat, bench/plain_wsgi.py, bench/cgi/hello.c."""
ENV_BODY = _env_sample_body()

HEALTHZ = Scenario("GET /healthz", "GET", "/healthz", expect=lambda data: data == b"OK")
HELLO = Scenario(
    "GET /hello",
    "GET",
    "/hello",
    expect=lambda data: data == HELLO_BODY,
    content_type="text/plain",
)
ENV = Scenario(
    "GET /env/x?a=1",
    "GET",
    "/env/x?a=1",
    expect=lambda data: ENV_BODY.fullmatch(data) is not None,
    content_type="text/plain",
)
ECHO = Scenario(
    "POST /echo 16 KiB",
    "POST",
    "/echo",
    body=ECHO_BODY,
    headers={"Content-Type": "application/octet-stream"},
    expect=lambda data: data == ECHO_BODY,
    content_type="application/octet-stream",
)
SCENARIOS = (
    HEALTHZ,
    HELLO,
    ENV,
    ECHO,
    Scenario("GET /healthz again", "GET", "/healthz", expect=lambda data: data == b"OK"),
)


@dataclass
class LoadResult:
    label: str
    ok: int
    errors: int
    elapsed_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    connections: int | None = None
    """TCP connections opened (python load generator only)."""
    server_cpu_s: float = 0.0
    client_cpu_s: float | None = None
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.ok * 1e6 if self.ok else float("nan")


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


# --------------------------------------------------------------------------- /proc


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process we can see."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":  # a zombie holds no memory and will not serve
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    found: list[int] = []
    stack = list(tree.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(tree.get(child, []))
    return found


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU time of ``pid`` (0 if it is gone).

    ``reaped_children`` adds the CPU time of its children that have ended and
    been waited for: a process that forks per request (fcgiwrap) accounts its
    CGI programs that way.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process under it, ended children included.

    Compare two readings: the difference is what the whole tree spent between
    them, including processes that started and ended in between.
    """
    pids = [pid, *descendants(pid, children_map())]
    return sum(cpu_seconds(p, reaped_children=True) for p in pids)


def memory_kib(pid: int | str) -> dict[str, int]:
    """RSS, and PSS and USS when ``smaps_rollup`` is readable, in KiB."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1])
    except OSError:
        pass
    if "Rss" not in fields:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    fields["Rss"] = int(line.split()[1])
    result = {"rss": fields.get("Rss", 0)}
    if "Pss" in fields:
        result["pss"] = fields["Pss"]
        result["uss"] = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return result


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """One gunicorn on 127.0.0.1: ``wagi.wsgi:app`` with ``bench/modules.toml`` by default.

    ``app`` is any WSGI app importable from the repository root or ``bench/``
    (``plain_wsgi:app``); it gets the same command, settings
    (``bench/gunicorn.conf.py``) and environment as wagi. ``python`` is the
    interpreter that runs gunicorn (the one whose engine is wanted);
    ``access_log`` False turns gunicorn's access log off; on, it goes to a file of
    its own in ``tmp``, so the server log holds only the errors.
    """

    def __init__(
        self,
        engine: str,
        workers: int,
        tmp: Path,
        *,
        app: str = "wagi.wsgi:app",
        python: str = sys.executable,
        access_log: bool = True,
        settings: dict[str, str] | None = None,
    ) -> None:
        """``settings``: more ``WAGI_*`` variables (say, ``WAGI_KERNEL_WALL=off``)."""
        self.engine = engine
        self.workers = workers
        self.port = free_port()
        self.log_path = tmp / f"gunicorn-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAGI_")}
        env.pop("WEB_CONCURRENCY", None)
        path = (str(ROOT), str(ROOT / "bench"), env.get("PYTHONPATH", ""))
        env |= {
            "WAGI_CONFIG": CONFIG,
            "WAGI_ENGINE": engine,
            "WAGI_CACHE_DIR": str(tmp / f"cache-{self.port}"),
            "WAGI_BENCH_ACCESS_LOG": str(tmp / f"access-{self.port}.log") if access_log else "off",
            "PYTHONPATH": os.pathsep.join(p for p in path if p),
            **(settings or {}),
        }
        self.command = [
            python,
            "-m",
            "gunicorn",
            app,
            "-c",
            GUNICORN_CONF,
            "--bind",
            f"{HOST}:{self.port}",
            "--workers",
            str(workers),
        ]
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0
        self.ready_s = 0.0

    def start(self) -> None:
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = started + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.healthy():
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(
                f"no 200 from /healthz in {STARTUP_SECONDS:.0f} s:\n{self.log_tail()}"
            )
        self.startup_s = time.monotonic() - started
        self.wait_for_workers(deadline)
        self.ready_s = time.monotonic() - started

    def wait_for_workers(self, deadline: float) -> None:
        """/healthz answered, so one worker is up; wait (bounded) until all of them are.

        A worker builds its engine and routing table before it accepts, which
        nothing outside it can see but its CPU time: all ``workers`` are taken to
        be ready once they exist and none has used any CPU for a quarter second.
        """
        last: dict[int, float] = {}
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            cpu = {pid: cpu_seconds(pid) for pid in self.worker_pids()}
            if len(cpu) < self.workers or cpu != last:
                last, quiet_since = cpu, time.monotonic()
            elif time.monotonic() - quiet_since >= 0.25:
                return
            time.sleep(0.05)

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """gunicorn workers: the children of the master."""
        return sorted(children_map().get(self.pid, []))

    def helper_pids(self) -> dict[int, list[int]]:
        """Worker -> the processes it started (the wasmer watchdog, say)."""
        tree = children_map()
        return {w: descendants(w, tree) for w in tree.get(self.pid, [])}

    def server_cpu(self) -> float:
        """CPU seconds of the master and every process under it (workers, their helpers)."""
        return tree_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- load generators


def check_once(port: int, scenario: Scenario) -> None:
    """One request; raise if the answer is not the expected one (before timing anything)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request(scenario.method, scenario.path, scenario.body, scenario.headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    content_type = response.getheader("Content-Type")
    if response.status != 200 or not scenario.expect(data):
        raise RuntimeError(
            f"{scenario.label} on port {port}: unexpected answer {response.status}: {data[:300]!r}"
        )
    if scenario.content_type is not None and content_type != scenario.content_type:
        raise RuntimeError(
            f"{scenario.label} on port {port}: Content-Type {content_type!r}, "
            f"expected {scenario.content_type!r}"
        )


@dataclass
class _ClientStats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    connections: int = 0
    first_error: str = ""


def python_load(
    port: int, scenario: Scenario, requests: int, concurrency: int, max_seconds: float
) -> LoadResult:
    """``requests`` requests from ``concurrency`` threads, stopping early at ``max_seconds``."""
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds

    def client(stats: _ClientStats) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
        try:
            while next(counter) < requests and time.monotonic() < deadline:
                if conn.sock is None:
                    stats.connections += 1  # gunicorn's sync workers close after each response
                start = time.perf_counter()
                try:
                    conn.request(scenario.method, scenario.path, scenario.body, scenario.headers)
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    stats.errors += 1
                    stats.first_error = stats.first_error or f"{type(exc).__name__}: {exc}"
                    continue
                latency = time.perf_counter() - start
                if response.status == 200 and scenario.expect(data):
                    stats.latencies.append(latency)
                else:
                    stats.errors += 1
                    stats.first_error = stats.first_error or f"{response.status}: {data[:100]!r}"
        finally:
            conn.close()

    stats = [_ClientStats() for _ in range(concurrency)]
    threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in stats]
    cpu_start = time.process_time()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        # Every request is bounded by REQUEST_TIMEOUT and none starts after the deadline.
        thread.join(timeout=max_seconds + 2 * REQUEST_TIMEOUT)
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - cpu_start
    latencies = sorted(x * 1e3 for s in stats for x in s.latencies)
    return LoadResult(
        label=scenario.label,
        ok=len(latencies),
        errors=sum(s.errors for s in stats),
        elapsed_s=elapsed,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        connections=sum(s.connections for s in stats),
        client_cpu_s=client_cpu,
        first_error=next((s.first_error for s in stats if s.first_error), ""),
    )


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def wrk_load(
    port: int, scenario: Scenario, concurrency: int, seconds: float, tmp: Path
) -> LoadResult:
    """``wrk`` for ``seconds`` with ``concurrency`` connections; bodies are not checked."""
    threads = min(concurrency, os.cpu_count() or 1)
    command = [
        "wrk",
        "--latency",
        f"--threads={threads}",
        f"--connections={concurrency}",
        f"--duration={max(1, round(seconds))}s",
        f"--timeout={REQUEST_TIMEOUT:.0f}s",
    ]
    lines = []
    if scenario.method != "GET" or scenario.body or scenario.headers:
        body_file = tmp / "wrk-body.bin"
        body_file.write_bytes(scenario.body or b"")
        lines += [
            f'wrk.method = "{scenario.method}"',
            f'local f = assert(io.open("{body_file}", "rb"))',
            "wrk.body = f:read('*a')",
            "f:close()",
        ]
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in scenario.headers.items()]
    if lines:
        script = tmp / "wrk-request.lua"
        script.write_text("\n".join(lines) + "\n")
        command += ["--script", str(script)]
    command.append(f"http://{HOST}:{port}{scenario.path}")
    output = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=seconds + 2 * REQUEST_TIMEOUT,
        check=True,
    ).stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if done is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    total = int(done.group(1))
    elapsed = _wrk_ms(done.group(2) + done.group(3)) / 1e3
    percentiles = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", output, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    bad = int(non_2xx.group(1)) if non_2xx else 0
    errors = bad + (sum(int(x) for x in socket_errors.groups()) if socket_errors else 0)
    return LoadResult(
        label=scenario.label,
        ok=total - bad,
        errors=errors,
        elapsed_s=elapsed,
        # wrk prints no distribution when no request completed.
        p50_ms=_wrk_ms(percentiles["50"]) if "50" in percentiles else float("nan"),
        p90_ms=_wrk_ms(percentiles["90"]) if "90" in percentiles else float("nan"),
        p99_ms=_wrk_ms(percentiles["99"]) if "99" in percentiles else float("nan"),
        first_error=(socket_errors.group(0) if socket_errors else "") if errors else "",
    )


# --------------------------------------------------------------------------- one engine


@dataclass
class EngineReport:
    engine: str
    python: str
    workers: int
    concurrency: int
    loadgen: str
    startup_s: float
    ready_s: float
    results: list[LoadResult]
    memory: dict[str, dict[int, dict[str, int]]]
    """Phase ("start", "warm", "end") -> worker pid -> figures in KiB."""
    helpers: dict[str, dict[int, dict[str, int]]]
    """Phase -> worker pid -> summed figures of the processes that worker started."""
    master: dict[str, int]
    worker_restarts: bool


def snapshot(server: Server) -> tuple[dict[int, dict[str, int]], dict[int, dict[str, int]]]:
    workers: dict[int, dict[str, int]] = {}
    helpers: dict[int, dict[str, int]] = {}
    for worker, helper_pids in server.helper_pids().items():
        workers[worker] = memory_kib(worker)
        if helper_pids:
            total: dict[str, int] = {}
            for pid in helper_pids:
                for key, value in memory_kib(pid).items():
                    total[key] = total.get(key, 0) + value
            helpers[worker] = total
    return workers, helpers


def bench_engine(requested: str, engine: str, args: argparse.Namespace) -> EngineReport:
    with tempfile.TemporaryDirectory(prefix="wagi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = Server(requested, args.workers, tmp)
        try:
            print(
                f"\nstarting gunicorn (WAGI_ENGINE={requested}, {args.workers} workers) "
                f"on {HOST}:{server.port}"
            )
            server.start()
            memory: dict[str, dict[int, dict[str, int]]] = {}
            helpers: dict[str, dict[int, dict[str, int]]] = {}
            memory["start"], helpers["start"] = snapshot(server)
            workers_before = server.worker_pids()

            for scenario in SCENARIOS:
                check_once(server.port, scenario)
            warmup = max(args.concurrency, args.requests // 10)
            for scenario in SCENARIOS[1:-1]:
                python_load(server.port, scenario, warmup, args.concurrency, args.max_seconds)
            memory["warm"], helpers["warm"] = snapshot(server)

            results = []
            for scenario in SCENARIOS:
                print(f"  {scenario.label} ...", end="", flush=True)
                cpu_start = server.server_cpu()
                if args.loadgen == "wrk":
                    result = wrk_load(
                        server.port, scenario, args.concurrency, args.wrk_seconds, tmp
                    )
                else:
                    result = python_load(
                        server.port, scenario, args.requests, args.concurrency, args.max_seconds
                    )
                result.server_cpu_s = server.server_cpu() - cpu_start
                print(f" {result.ok} in {result.elapsed_s:.1f} s")
                results.append(result)
            memory["end"], helpers["end"] = snapshot(server)
            restarts = server.worker_pids() != workers_before
            master = memory_kib(server.pid)
            if restarts:
                print("WARNING: workers were replaced during the run; see the log:")
                print(server.log_tail())
        except Exception:
            print(f"\ngunicorn log (last lines):\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    return EngineReport(
        engine=engine,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        workers=args.workers,
        concurrency=args.concurrency,
        loadgen=args.loadgen,
        startup_s=server.startup_s,
        ready_s=server.ready_s,
        results=results,
        memory=memory,
        helpers=helpers,
        master=master,
        worker_restarts=restarts,
    )


# --------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def signed(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:+.{digits}f}"


def package_version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def print_report(report: EngineReport) -> None:
    base = report.results[0]
    print(
        f"\n== {report.engine} {package_version(report.engine)}, {report.python}, "
        f"{report.workers} sync workers, concurrency {report.concurrency}, "
        f"load generator {report.loadgen}, {os.cpu_count()} CPUs"
    )
    print(
        f"startup (fresh artifact cache): first /healthz 200 after {report.startup_s:.2f} s, "
        f"all workers idle after {report.ready_s:.2f} s"
    )
    header = (
        f"{'endpoint':<20} {'ok':>6} {'err':>4} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p99 ms':>7} {'Δp50 µs':>8} {'CPU µs/req':>10} {'ΔCPU µs':>8}"
    )
    print(header)
    print("-" * len(header))
    for result in report.results:
        is_base = result is base
        d_p50 = "(base)" if is_base else signed((result.p50_ms - base.p50_ms) * 1e3)
        d_cpu = "(base)" if is_base else signed(result.cpu_us_per_request - base.cpu_us_per_request)
        print(
            f"{result.label:<20} {result.ok:>6} {result.errors:>4} {fmt(result.rps, 1):>8} "
            f"{fmt(result.p50_ms):>7} {fmt(result.p90_ms):>7} {fmt(result.p99_ms):>7} "
            f"{d_p50:>8} {fmt(result.cpu_us_per_request, 0):>10} {d_cpu:>8}"
        )
    for result in report.results:
        if result.errors:
            print(f"  {result.label}: {result.errors} errors, first: {result.first_error}")
    if base.connections is not None and base.ok:
        print(
            f"connections opened per request: {base.connections / (base.ok + base.errors):.2f} "
            "(sync workers close after each response, so every request includes a TCP connect)"
        )
    if base.client_cpu_s is not None:
        busiest = max(report.results, key=lambda r: r.client_cpu_s or 0.0)
        share = (busiest.client_cpu_s or 0.0) / busiest.elapsed_s * 100
        print(
            f"load generator CPU: up to {share:.0f}% of one core ({busiest.label}); "
            "it shares the machine with the workers"
        )
    print_memory(report)


def print_memory(report: EngineReport) -> None:
    phases = ("start", "warm", "end")
    kinds = [k for k in ("rss", "pss", "uss") if all(k in m for m in report.memory["end"].values())]
    print("\nmemory per worker, MiB (start: no request yet; warm: after warm-up; end: after load)")
    header = f"{'worker':<18} {'start':>8} {'warm':>8} {'end':>8} {'warm→end':>9} {'start→end':>10}"
    print(header)
    print("-" * len(header))
    pids = sorted(report.memory["end"])
    rows: list[tuple[str, dict[str, dict[str, float]]]] = [
        (f"pid {pid}", {p: dict(report.memory[p].get(pid, {})) for p in phases}) for pid in pids
    ]
    if len(pids) > 1:
        mean: dict[str, dict[str, float]] = {
            p: {
                k: sum(report.memory[p].get(pid, {}).get(k, 0) for pid in pids) / len(pids)
                for k in kinds
            }
            for p in phases
        }
        rows.append(("mean", mean))
    for name, figures in rows:
        for kind in kinds:
            start, warm, end = (figures[p].get(kind, float("nan")) / 1024 for p in phases)
            label = f"{name if kind == kinds[0] else '':<14}{kind.upper():>4}"
            print(
                f"{label} {fmt(start, 1):>8} {fmt(warm, 1):>8} {fmt(end, 1):>8} "
                f"{signed(end - warm, 1):>9} {signed(end - start, 1):>10}"
            )
    for pid, helper in sorted(report.helpers.get("end", {}).items()):
        described = ", ".join(f"{k.upper()} {v / 1024:.1f}" for k, v in helper.items())
        print(f"processes started by worker {pid} (the watchdog): {described} MiB")
    master = ", ".join(f"{k.upper()} {v / 1024:.1f}" for k, v in report.master.items())
    print(f"gunicorn master: {master} MiB")


# --------------------------------------------------------------------------- main


def resolve_engines(requested: str) -> list[tuple[str, str]]:
    """(WAGI_ENGINE value, engine that will run) for each server to start."""
    if requested == "all":
        names = [n for n in ENGINE_NAMES if importable(n)[0]]
        if not names:
            raise SystemExit("no engine imports on this Python")
        return [(n, n) for n in names]
    if requested == "auto":
        # Only imports the engine packages (as the gunicorn master does); creates no engine.
        config = load_config(ROOT / CONFIG)
        return [("auto", choose_engine("auto", config, None).name)]
    ok, why = importable(requested)
    if not ok:
        raise SystemExit(f"engine {requested!r}: {why}")
    return [(requested, requested)]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        description="Benchmark wagi over HTTP against a /healthz baseline measured in the same run."
    )
    parser.add_argument("--engine", default="auto", choices=["auto", "all", *ENGINE_NAMES])
    parser.add_argument(
        "--requests", type=positive, default=10000, help="requests per endpoint (python loadgen)"
    )
    parser.add_argument(
        "--concurrency", type=positive, default=None, help="parallel connections (default: W)"
    )
    parser.add_argument(
        "--workers", type=positive, default=cpus, help=f"gunicorn workers (default: {cpus})"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="stop an endpoint's load after this many seconds (python loadgen)",
    )
    parser.add_argument("--loadgen", choices=["python", "wrk"], default="python")
    parser.add_argument("--wrk-seconds", type=float, default=5.0, help="seconds per endpoint")
    parser.add_argument("--no-micro", action="store_true", help="skip bench/engine_overhead.py")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = args.workers
    if args.loadgen == "wrk" and shutil.which("wrk") is None:
        parser.error("--loadgen wrk: wrk is not installed (Debian package 'wrk')")
    return args


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the servers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    engines = resolve_engines(args.engine)
    reports: list[EngineReport] = []
    status = 0
    with sigterm_raises():
        for requested, engine in engines:
            report = bench_engine(requested, engine, args)
            reports.append(report)
            print_report(report)
            if any(r.errors for r in report.results) or report.worker_restarts:
                status = 1
            if not args.no_micro:
                micro = [
                    sys.executable,
                    str(ROOT / "bench" / "engine_overhead.py"),
                    "--engine",
                    engine,
                    "--runs",
                    str(min(args.requests, 2000)),
                ]
                sys.stdout.flush()
                status |= subprocess.run(micro, cwd=ROOT, stdin=subprocess.DEVNULL).returncode
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
