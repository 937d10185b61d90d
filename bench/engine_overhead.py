#!/usr/bin/env python3
"""In-process micro-benchmark: what one module run and one WSGI call cost, without HTTP.

Usage::

    python bench/engine_overhead.py [--engine auto|wasmer|wasmtime|all] [--runs N]
                                    [--module samples/hello.wat]
                                    [--json FILE] [--profile DIR]

It creates an engine directly (``wagi.engines.create_engine``), loads the module
and runs it ``N`` times with ``engine.run(module, Invocation(...))``, timing every
call. Two baselines are measured in the same process with the same count:

- a Python loop that does nothing, the cost of the loop itself;
- a loop that only constructs the :class:`~wagi.engines.base.Invocation`.

"run - Invocation" is then what the engine adds per run: a store, WASI state,
an instance, the call, and copying stdout back.

Then, in the same process:

- **per write**: ``bench/lines.wat`` writes its body in 1,000 one-line writes;
  its run time minus hello's (one write), divided by 1,000, is what a write
  costs, to a buffer and to a :class:`PipeSink` (the streamed path);
- **the whole WSGI app**: a :class:`wagi.server.gateway.Gateway` built from
  ``bench/modules.toml`` is called for ``GET /hello`` with a prepared WSGI
  environ, built as a worker builds it (on a thread it confines for good:
  :func:`measure_worker`), with the wall off, and as ``wagi run`` builds it
  (a runner thread); next to ``bench/plain_wsgi.py`` and a bare werkzeug
  Request + Response called the same way. No HTTP, no gunicorn;
- ``--profile DIR`` (needs pyinstrument, the ``bench`` extra): where the time of
  those WSGI calls and of the engine runs goes, saved as text in DIR.

The engine is created in this process and nothing is forked after that (a
forked child of a process that compiled with cranelift hangs). With
``--engine all`` this process creates no engine at all: it starts a fresh
``python bench/engine_overhead.py --engine NAME`` for each engine instead.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import gc
import importlib.metadata
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from wagi.engines import ENGINE_NAMES, create_engine, importable  # noqa: E402
from wagi.engines.base import (  # noqa: E402
    Engine,
    Invocation,
    Limits,
    LoadedModule,
    StdoutSink,
)
from wagi.execution.engine_choice import choose_engine  # noqa: E402

DEFAULT_MODULE = ROOT / "samples" / "hello.wat"
DEFAULT_RUNS = 2000
WARMUP_RUNS = 20

LINES_MODULE = BENCH / "lines.wat"
LINES = 1000
"""Body writes of ``bench/lines.wat`` (plus one for its header block)."""
HELLO_OUTPUT = b"Content-Type: text/plain\n\nHello, world!\n"
LINES_OUTPUT = b"Content-Type: text/plain\n\n" + b"Hello, world!\n" * LINES

# Roughly what the gateway passes for ``GET /env/x?a=1``: the CGI variables.
CGI_ENV: Mapping[str, str] = {
    "AUTH_TYPE": "",
    "CONTENT_LENGTH": "0",
    "CONTENT_TYPE": "",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "HTTP_ACCEPT": "*/*",
    "HTTP_HOST": "127.0.0.1:3000",
    "HTTP_USER_AGENT": "bench",
    "PATH_INFO": "/x",
    "PATH_TRANSLATED": "/x",
    "QUERY_STRING": "a=1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_HOST": "127.0.0.1",
    "REMOTE_PORT": "49400",
    "REMOTE_USER": "",
    "REQUEST_METHOD": "GET",
    "REQUEST_URI": "/env/x?a=1",
    "SCRIPT_NAME": "/env",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "3000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "SERVER_SOFTWARE": "WAGI/0.1.0",
    "X_FULL_URL": "http://127.0.0.1:3000/env/x?a=1",
    "X_MATCHED_ROUTE": "/env/...",
    "X_RAW_PATH_INFO": "/x",
}
REQUEST_ENV: Mapping[str, str] = {"GREETING": "hello from modules.toml", **CGI_ENV}
"""25 variables: the CGI variables plus a module's own, as large as a real request's."""


@dataclass
class Timing:
    label: str
    total_s: float
    count: int
    per_call_ns: array.array[int] | None = None
    """Each call timed on its own (engine runs only; too coarse for the baselines)."""
    failures: int = 0
    """Calls whose result was not the expected one."""
    cpu_s: float | None = None
    """CPU time of the whole process (every thread) over the calls."""

    @property
    def mean_us(self) -> float:
        return self.total_s / self.count * 1e6

    @property
    def cpu_us(self) -> float | None:
        """Mean CPU µs per call: steadier than wall time when other processes compete."""
        return None if self.cpu_s is None else self.cpu_s / self.count * 1e6

    def percentile_us(self, p: float) -> float | None:
        if not self.per_call_ns:
            return None
        ordered = sorted(self.per_call_ns)
        rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
        return ordered[rank] / 1000

    def as_json(self, key: str) -> dict[str, Any]:
        return {
            "key": key,
            "label": self.label,
            "runs": self.count,
            "failures": self.failures,
            "mean_us": self.mean_us,
            "p50_us": self.percentile_us(50),
            "p99_us": self.percentile_us(99),
            "cpu_us": self.cpu_us,
        }


def memory_kib() -> dict[str, int]:
    """RSS, PSS and USS of this process in KiB (the same reading ``run.py`` takes of workers)."""
    from run import memory_kib as process_memory_kib

    return process_memory_kib("self")


def time_loop(label: str, count: int, body: Callable[[], object]) -> Timing:
    """``count`` calls of ``body`` in a plain loop, timed as a whole."""
    start = time.perf_counter()
    for _ in range(count):
        body()
    return Timing(label, time.perf_counter() - start, count)


def noop_loop(count: int) -> Timing:
    start = time.perf_counter()
    for _ in range(count):
        pass
    return Timing("no-op loop", time.perf_counter() - start, count)


def timed_calls(label: str, count: int, call: Callable[[], bool]) -> Timing:
    """``count`` calls of ``call``, each timed on its own; a False return is a failure.

    The timings buffer is allocated beforehand, so that recording the timings
    does not show up as memory growth.
    """
    per_call = timings_buffer(count)
    failures = 0
    clock = time.perf_counter_ns
    cpu_start = time.process_time()
    start = time.perf_counter()
    for i in range(count):
        t0 = clock()
        ok = call()
        per_call[i] = clock() - t0
        if not ok:
            failures += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return Timing(label, elapsed, count, per_call, failures, cpu)


def print_table(title: str, timings: list[Timing]) -> None:
    """Wall time per call (mean, p50, p99) and CPU time per call (mean)."""
    print(title)
    header = f"{'case':<38} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9} {'CPU µs':>9}"
    print(header)
    print("-" * len(header))
    for timing in timings:
        print(
            f"{timing.label:<38} {fmt_us(timing.mean_us):>9} "
            f"{fmt_us(timing.percentile_us(50)):>9} {fmt_us(timing.percentile_us(99)):>9} "
            f"{fmt_us(timing.cpu_us):>9}"
        )


def time_runs(
    label: str,
    engine: Engine,
    module: LoadedModule,
    count: int,
    argv: list[str],
    env: Mapping[str, str],
    expect: bytes,
    limits: Limits | None = None,
) -> Timing:
    """``count`` runs with stdout kept in the result; a run must print ``expect``."""
    limits = limits or Limits()

    def run() -> bool:
        invocation = Invocation(entrypoint="_start", argv=argv, env=env, limits=limits)
        result = engine.run(module, invocation)
        return result.succeeded and expect in result.stdout

    return timed_calls(label, count, run)


class PipeSink(StdoutSink):
    """A run's stdout to a pipe, each write as the module makes it: the streamed path.

    The gateway's :class:`~wagi.server.streaming.ClientStream` hands each write to WSGI
    ``write`` and so to the client socket; this sink does the one system call of that
    path (``os.write``) and nothing of HTTP. The pipe holds 1 MiB, more than any run
    here writes; :meth:`drain` reads it empty after each run.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, 1024 * 1024)

    def write(self, data: memoryview) -> None:
        while data:
            data = data[os.write(self.write_fd, data) :]

    def drain(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(self.read_fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def time_sink_runs(
    label: str,
    engine: Engine,
    module: LoadedModule,
    count: int,
    env: Mapping[str, str],
    expect: bytes,
) -> Timing:
    """``count`` runs writing stdout to a :class:`PipeSink` as it is written; exact bytes."""
    sink = PipeSink()
    try:

        def run() -> bool:
            invocation = Invocation(entrypoint="_start", argv=["/"], env=env, stdout=sink)
            result = engine.run(module, invocation)
            return result.succeeded and sink.drain() == expect

        return timed_calls(label, count, run)
    finally:
        sink.close()


def median_difference(a: Timing, b: Timing) -> float:
    """p50 of ``a`` minus p50 of ``b``, in µs."""
    return (a.percentile_us(50) or 0.0) - (b.percentile_us(50) or 0.0)


def cpu_difference(a: Timing, b: Timing) -> float:
    """Mean CPU µs per call of ``a`` minus that of ``b``."""
    return (a.cpu_us or 0.0) - (b.cpu_us or 0.0)


def timings_buffer(count: int) -> array.array[int]:
    return array.array("q", bytes(8 * count))


def fmt_us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def engine_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------- the WSGI app


def hello_environ() -> dict[str, Any]:
    """The WSGI environ of ``GET /hello`` as gunicorn would build it for wrk's request."""
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(
        path="/hello",
        base_url="http://127.0.0.1:8000",
        headers={"Host": "127.0.0.1:8000"},
        environ_overrides={
            "RAW_URI": "/hello",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "49400",
            "SERVER_SOFTWARE": "gunicorn",
        },
    )
    return builder.get_environ()


def wsgi_caller(
    app: Callable[..., Any], template: Mapping[str, Any]
) -> Callable[[], tuple[str, list[tuple[str, str]], bytes]]:
    """A function that calls ``app`` once the way a WSGI server does: status, headers, body."""

    def call() -> tuple[str, list[tuple[str, str]], bytes]:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO()
        started: list[Any] = []
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            started[:] = [status, headers]
            return written.append  # WSGI write: where a streamed response goes

        body = app(environ, start_response)
        try:
            data = b"".join([*written, *body])
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return started[0], started[1], data

    return call


def check_hello(label: str, answer: tuple[str, list[tuple[str, str]], bytes]) -> None:
    status, headers, body = answer
    content_type = dict(headers).get("Content-Type")
    if status != "200 OK" or body != b"Hello, world!\n" or content_type != "text/plain":
        raise RuntimeError(f"{label}: unexpected answer {status} {headers} {body[:200]!r}")


def werkzeug_hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """The least a werkzeug app does per request: a Request and a Response."""
    from werkzeug.wrappers import Request, Response

    Request(environ)
    return Response(b"Hello, world!\n", content_type="text/plain")(environ, start_response)


def make_gateway(name: str, cache: Path, *, serving: bool, wall: str = "auto") -> Any:
    """A Gateway for ``bench/modules.toml`` on engine ``name``.

    ``serving``: as a gunicorn worker builds it (``build_worker(serving=True)``): on an
    engine whose wall covers the whole worker (wasmtime), the wall goes up around the
    CALLING THREAD, for good, and modules then run on that thread. Without it, as
    ``wagi run`` builds it: this thread stays unconfined and modules run on confined
    runner threads. ``wall``: ``--kernel-wall`` (``auto`` or ``off``).
    """
    from wagi.config import load_config
    from wagi.config import settings as wagi_settings
    from wagi.server.gateway import Gateway
    from wagi.server.worker import build_worker

    settings = wagi_settings.load(
        environ={
            "WAGI_CONFIG": str(BENCH / "modules.toml"),
            "WAGI_ENGINE": name,
            "WAGI_CACHE_DIR": str(cache),
            "WAGI_KERNEL_WALL": wall,
        }
    )
    return Gateway(build_worker(settings, load_config(settings.config), serving=serving))


# --------------------------------------------------------------------------- profile


def profile_text(name: str, title: str, runs: int, call: Callable[[], object]) -> str | None:
    """A pyinstrument profile of ``runs`` calls of ``call`` on this thread, as text.

    Only the calling thread is sampled: whatever runs elsewhere shows as a wait. The text
    is returned, not written: the thread may be confined (see :func:`measure_worker`).
    """
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("--profile: pyinstrument is not installed (pip install -e '.[bench]')")
        return None
    profiler = Profiler(interval=0.0001)
    profiler.start()
    for _ in range(runs):
        call()
    profiler.stop()
    header = (
        f"# {title}\n# {name} {engine_version(name)}, Python {platform.python_version()}, "
        f"{runs} calls, pyinstrument {engine_version('pyinstrument')} (interval 0.1 ms)\n"
    )
    return header + profiler.output_text(unicode=True, color=False)


def engine_profile(name: str, runs: int, engine: Engine, module: LoadedModule) -> str | None:
    """The profile of ``engine.run`` as the gateway calls it for GET /hello."""
    sink = PipeSink() if engine.capabilities.streaming else None
    where = "stdout to a sink (os.write to a pipe)" if sink else "stdout buffered"

    def run() -> None:
        invocation = Invocation(entrypoint="_start", argv=["/hello"], env=REQUEST_ENV, stdout=sink)
        engine.run(module, invocation)
        if sink is not None:
            sink.drain()

    try:
        return profile_text(
            name,
            f"engine.run of samples/hello.wat with 25 variables, {where} (what the gateway "
            "runs for each request)",
            runs,
            run,
        )
    finally:
        if sink is not None:
            sink.close()


# --------------------------------------------------------------------------- the worker


@dataclass
class WorkerFigures:
    """What :func:`measure_worker` measured on its thread."""

    timing: Timing | None = None
    wall: str = ""
    """What the wall around the measuring thread grants, or why there is none."""
    profile: str | None = None
    error: str = ""


def measure_worker(
    name: str, cache: Path, runs: int, template: Mapping[str, Any], profile_runs: int
) -> WorkerFigures:
    """The whole WSGI call for GET /hello in a Gateway built as a gunicorn worker builds it.

    Runs on a thread of its own: ``Gateway.create(serving=True)`` raises the worker's
    kernel wall around the calling thread for good (wasmtime), and modules then run on
    that very thread, as in a worker. The other threads of this process stay unconfined,
    free to write the results where they like; this one writes nothing.
    """
    figures = WorkerFigures()

    def measure() -> None:
        try:
            gateway = make_gateway(name, cache, serving=True)
            confined = gateway.sites.confined_here is not None
            plan = gateway.sites.plan
            figures.wall = (
                f"the wall is up around this thread: {plan.worker.describe()}"
                if confined
                else f"no wall around this thread ({plan.available.why or 'not this engine'})"
            )
            call = wsgi_caller(gateway, template)
            check_hello("wagi WSGI app (worker)", call())
            for _ in range(WARMUP_RUNS):
                call()
            label = "wagi Gateway as a worker, " + ("wall up" if confined else "no wall")
            figures.timing = timed_calls(label, runs, lambda: call()[2] == b"Hello, world!\n")
            if profile_runs:
                figures.profile = profile_text(
                    name,
                    "The whole WSGI app call for GET /hello, in-process, in a Gateway built as "
                    "a gunicorn worker builds it (Gateway.create(serving=True): "
                    + (
                        "the kernel wall up around this thread, the module run on it)"
                        if confined
                        else "no wall here, the module run on this thread)"
                    ),
                    profile_runs,
                    call,
                )
        except Exception as exc:  # reported by the caller, with the other figures
            figures.error = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=measure, name="bench worker (confined)")
    thread.start()
    thread.join()
    return figures


# --------------------------------------------------------------------------- one engine


def bench_engine(
    name: str,
    module_path: Path,
    runs: int,
    json_path: Path | None = None,
    profile_dir: Path | None = None,
    components: Mapping[str, Path] | None = None,
) -> int:
    """Benchmark engine ``name`` in this process. Returns an exit status."""
    with tempfile.TemporaryDirectory(prefix="wagi-bench-") as tmp:
        return _bench_engine(
            name, module_path, runs, Path(tmp) / "cache", json_path, profile_dir, components
        )


def _bench_engine(
    name: str,
    module_path: Path,
    runs: int,
    cache: Path,
    json_path: Path | None,
    profile_dir: Path | None,
    components: Mapping[str, Path] | None,
) -> int:
    mem_start = memory_kib()
    t0 = time.perf_counter()
    engine = create_engine(name, cache)
    t1 = time.perf_counter()
    module = engine.load(module_path)
    t2 = time.perf_counter()
    lines = engine.load(LINES_MODULE)
    hello = module if module_path == DEFAULT_MODULE else engine.load(DEFAULT_MODULE)
    # As `wagi run` builds it: this thread unconfined, modules on confined runner threads.
    runner_gateway = make_gateway(name, cache, serving=False)
    # As a worker builds it with --kernel-wall off: nothing confined, modules on this thread.
    nowall_gateway = make_gateway(name, cache, serving=True, wall="off")
    mem_loaded = memory_kib()

    argv = ["/hello"]
    small_env = {"GREETING": "hello"}
    expect = b"Hello, world!" if module_path.name == "hello.wat" else b""

    # Warm up: the first runs fill caches (and the wasmtime ticker, if any).
    warm = time_runs("warm-up", engine, module, WARMUP_RUNS, argv, small_env, expect)
    if warm.failures:
        print(f"{name}: {warm.failures}/{WARMUP_RUNS} warm-up runs failed", file=sys.stderr)
        return 1
    mem_warm = memory_kib()

    gc.collect()
    baseline = noop_loop(runs)
    construct = time_loop(
        "construct Invocation",
        runs,
        lambda: Invocation(entrypoint="_start", argv=argv, env=small_env),
    )
    run_small = time_runs("run (argv + 1 env var)", engine, module, runs, argv, small_env, expect)
    run_request = time_runs(
        f"run (argv + {len(REQUEST_ENV)} env vars)",
        engine,
        module,
        runs,
        argv,
        REQUEST_ENV,
        expect,
    )
    # The floor: a module that does nothing, with nothing to pass in (store, WASI context,
    # instance, call and the run's bookkeeping; no argv or environment, no write).
    empty_path = cache.parent / "empty.wat"
    empty_path.write_text('(module (memory (export "memory") 1) (func (export "_start")))\n')
    empty = engine.load(empty_path)
    run_empty = time_runs("run of an empty module (floor)", engine, empty, runs, [], {}, b"")
    hello_handler = nowall_gateway.table.match("/hello").handler
    run_limits = time_runs(
        f"run ({len(REQUEST_ENV)} vars, server limits)",
        engine,
        module,
        runs,
        argv,
        REQUEST_ENV,
        expect,
        hello_handler.limits,
    )
    mem_end = memory_kib()

    # Many small writes: hello (1 write) against lines (1 + 1,000 writes), same environment.
    line_runs = max(20, runs // 10)
    hello_buffered = time_runs(
        "hello, stdout buffered", engine, hello, line_runs, argv, REQUEST_ENV, HELLO_OUTPUT
    )
    lines_buffered = time_runs(
        "lines, stdout buffered", engine, lines, line_runs, argv, REQUEST_ENV, LINES_OUTPUT
    )
    hello_sink = lines_sink = None
    if engine.capabilities.streaming:  # the others keep stdout whole in the result
        hello_sink = time_sink_runs(
            "hello, stdout to a sink (pipe)", engine, hello, line_runs, REQUEST_ENV, HELLO_OUTPUT
        )
        lines_sink = time_sink_runs(
            "lines, stdout to a sink (pipe)", engine, lines, line_runs, REQUEST_ENV, LINES_OUTPUT
        )
    # Wall-time medians (one run of lines takes milliseconds, long enough to be hit by other
    # processes) and CPU means (what the process spent, whoever else wanted the CPUs).
    per_write: dict[str, float | None] = {
        "buffered": median_difference(lines_buffered, hello_buffered) / LINES,
        "buffered_cpu": cpu_difference(lines_buffered, hello_buffered) / LINES,
        "sink": None,
        "sink_cpu": None,
    }
    if lines_sink is not None and hello_sink is not None:
        per_write["sink"] = median_difference(lines_sink, hello_sink) / LINES
        per_write["sink_cpu"] = cpu_difference(lines_sink, hello_sink) / LINES

    # The whole WSGI app, next to the least a WSGI app can do.
    template = hello_environ()
    from plain_wsgi import app as plain_app

    callers = {
        "plain": wsgi_caller(plain_app, template),
        "werkzeug": wsgi_caller(werkzeug_hello, template),
        "nowall": wsgi_caller(nowall_gateway, template),
        "runner": wsgi_caller(runner_gateway, template),
    }
    for label, caller in callers.items():
        check_hello(f"{label} WSGI app", caller())
    for _ in range(WARMUP_RUNS):
        callers["nowall"]()
        callers["runner"]()

    def hello_ok(caller: Callable[[], tuple[str, list[tuple[str, str]], bytes]]) -> bool:
        return caller()[2] == b"Hello, world!\n"

    wsgi_plain = timed_calls(
        "plain WSGI app (bench/plain_wsgi.py)", runs, lambda: hello_ok(callers["plain"])
    )
    wsgi_werkzeug = timed_calls(
        "werkzeug Request + Response", runs, lambda: hello_ok(callers["werkzeug"])
    )
    wsgi_nowall = timed_calls(
        "wagi Gateway as a worker, wall off", runs, lambda: hello_ok(callers["nowall"])
    )
    runs_elsewhere = runner_gateway.sites.plan.worker is not None
    wsgi_runner = timed_calls(
        "wagi Gateway, runner thread (wagi run)"
        if runs_elsewhere and engine.capabilities.streaming
        else "wagi Gateway as wagi run builds it",
        runs,
        lambda: hello_ok(callers["runner"]),
    )
    handoff = None
    if engine.capabilities.streaming:
        # What running a module on a runner thread adds, without the module (wagi run's way;
        # a worker's way before the whole worker was confined).
        from wagi.execution.runners import RunnerPool

        pool = RunnerPool("bench hand-off")
        for _ in range(WARMUP_RUNS):
            pool.submit(bool).result()
        handoff = timed_calls(
            "runner thread hand-off (no-op job)", runs, lambda: not pool.submit(bool).result()
        )
        pool.close()

    component_figures: dict[str, Any] = {}
    component_timings: list[Timing] = []
    env_core = None
    if components:
        component_figures, component_timings = time_components(engine, runs, components)
        if "c" in components:
            env_module = engine.load(ROOT / "samples" / "env.wasm")
            env_core = time_runs(
                "C env sample (core module)",
                engine,
                env_module,
                max(50, runs // 4),
                ["/env"],
                REQUEST_ENV,
                b"GREETING=hello from modules.toml",
            )

    profile_runs = max(runs, 2000) if profile_dir is not None else 0
    engine_profile_text = (
        engine_profile(name, profile_runs, engine, hello) if profile_runs else None
    )
    # Last: a thread of this process confines itself for good (wasmtime), as a worker does.
    worker = measure_worker(name, cache, runs, template, profile_runs)

    print(
        f"\n== engine.run micro-benchmark: {name} {engine_version(name)} "
        f"(Python {platform.python_version()}), {module_path.relative_to(ROOT)}, {runs} runs"
    )
    print(
        f"create engine {(t1 - t0) * 1e3:.1f} ms, load module {(t2 - t1) * 1e3:.1f} ms "
        "(fresh artifact cache)"
    )
    header = (
        f"{'case':<34} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9} {'CPU µs':>9} "
        f"{'vs no-op µs':>12} {'vs Invocation µs':>17}"
    )
    print(header)
    print("-" * len(header))
    for timing in (baseline, construct, run_empty, run_small, run_request, run_limits):
        if timing is baseline:
            vs_noop, vs_inv = "(baseline)", "-"
        else:
            vs_noop = "+" + fmt_us(timing.mean_us - baseline.mean_us)
            vs_inv = (
                "(baseline)"
                if timing is construct
                else "+" + fmt_us(timing.mean_us - construct.mean_us)
            )
        print(
            f"{timing.label:<34} {fmt_us(timing.mean_us):>9} "
            f"{fmt_us(timing.percentile_us(50)):>9} {fmt_us(timing.percentile_us(99)):>9} "
            f"{fmt_us(timing.cpu_us):>9} {vs_noop:>12} {vs_inv:>17}"
        )
    measured = 4 * runs
    growth = mem_end["rss"] - mem_warm["rss"]
    line = (
        f"memory (MiB): RSS {fmt_mib(mem_start['rss'])} at start, "
        f"{fmt_mib(mem_loaded['rss'])} with engine + modules + gateways, "
        f"{fmt_mib(mem_warm['rss'])} warm, {fmt_mib(mem_end['rss'])} after {measured} runs "
        f"(growth {growth:+d} KiB, {growth * 1024 / measured:+.0f} B/run)"
    )
    if "pss" in mem_end:
        line += f"; PSS {fmt_mib(mem_warm['pss'])} -> {fmt_mib(mem_end['pss'])}"
    print(line)

    sunk = [t for t in (hello_sink, lines_sink) if t is not None]
    print_table(
        f"\nper write ({LINES} one-line writes against one write, {line_runs} runs each)",
        [hello_buffered, lines_buffered, *sunk],
    )
    to_sink = (
        f"{fmt_us(per_write['sink'])} µs ({fmt_us(per_write['sink_cpu'])} µs CPU) to a sink "
        "(os.write to a pipe, each write as made: the streamed path)"
        if sunk
        else "no sink: the engine cannot stream, stdout is buffered"
    )
    print(
        f"=> per write: {fmt_us(per_write['buffered'])} µs "
        f"({fmt_us(per_write['buffered_cpu'])} µs CPU) to a buffer, {to_sink} "
        f"(wall: difference of the p50s / {LINES}; CPU: of the means)"
    )
    print_table(
        f"\nthe WSGI app called in-process for GET /hello, {runs} calls, no HTTP",
        [
            wsgi_plain,
            wsgi_werkzeug,
            *([worker.timing] if worker.timing else []),
            wsgi_nowall,
            wsgi_runner,
            *([handoff] if handoff else []),
        ],
    )
    if worker.error:
        print(f"WARNING: the Gateway built as a worker could not be measured: {worker.error}")
    else:
        print(f"as a worker: {worker.wall}")

    if components:
        print_table(
            "\ncomponents (built by bench/compare.py), 25 env vars, stdout buffered",
            [*component_timings, *([env_core] if env_core else [])],
        )
        for kind, figures in component_figures.items():
            if not figures["available"]:
                print(f"component {kind}: not available: {figures['reason']}")

    profiles: list[Path] = []
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        for what, text in (("wsgi", worker.profile), ("engine", engine_profile_text)):
            if text is not None:
                path = profile_dir / f"profile-{name}-{what}.txt"
                path.write_text(text)
                profiles.append(path)
                print(f"profile written: {path}")

    timings = {
        "noop": baseline,
        "invocation": construct,
        "engine_empty": run_empty,
        "engine_hello_1": run_small,
        "engine_hello_25": run_request,
        "engine_hello_25_limits": run_limits,
        "hello_buffered": hello_buffered,
        "lines_buffered": lines_buffered,
        "wsgi_plain": wsgi_plain,
        "wsgi_werkzeug": wsgi_werkzeug,
        "wsgi_wagi_hello_nowall": wsgi_nowall,
        "wsgi_wagi_hello_runner": wsgi_runner,
    }
    if worker.timing is not None:
        timings["wsgi_wagi_hello"] = worker.timing
    if hello_sink is not None and lines_sink is not None:
        timings |= {"hello_sink": hello_sink, "lines_sink": lines_sink}
    if handoff is not None:
        timings["runner_handoff"] = handoff
    if env_core is not None:
        timings["env_core"] = env_core
    failures = {t.label: t.failures for t in timings.values() if t.failures}
    if worker.error:
        failures["wagi Gateway, as a worker"] = 1
    if json_path is not None:
        figures = {
            "engine": name,
            "version": engine_version(name),
            "python": platform.python_version(),
            "runs": runs,
            "create_engine_ms": (t1 - t0) * 1e3,
            "load_module_ms": (t2 - t1) * 1e3,
            "cases": [t.as_json(key) for key, t in timings.items()],
            "worker_wall": worker.wall,
            "worker_error": worker.error,
            "per_write_us": per_write,
            "lines_per_run": LINES,
            "memory_kib": {
                "start": mem_start,
                "loaded": mem_loaded,
                "warm": mem_warm,
                "end": mem_end,
            },
            "profiles": [str(p) for p in profiles],
            "components": component_figures,
            "failures": failures,
        }
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
    if failures:
        print(f"WARNING: runs that did not give the expected output: {failures}", file=sys.stderr)
        return 1
    return 0


def time_components(
    engine: Engine, runs: int, paths: Mapping[str, Path]
) -> tuple[dict[str, Any], list[Timing]]:
    """Runs of the components compare.py built, on this engine, if it loads them.

    ``py``: ``bench/cgi/hello.py`` built by componentize-py (``wasi:cli/run``);
    ``c``: ``samples/env.wasm`` made a component through the preview 1 adapter,
    timed beside the core module itself (``env_core``). An engine that cannot load
    or run a component is reported "not available" with its reason: wagi's
    component support is optional to this script.
    """
    expect = {"py": b'"hello": "world"', "c": b"GREETING=hello from modules.toml"}
    labels = {"py": "componentize-py hello (component)", "c": "C env sample (component)"}
    figures: dict[str, Any] = {}
    timings: list[Timing] = []
    count = max(50, runs // 4)
    for kind, path in paths.items():
        argv = ["/py"] if kind == "py" else ["/env"]
        try:
            component = engine.load(path)
            check = engine.run(
                component, Invocation(entrypoint="_start", argv=argv, env=REQUEST_ENV)
            )
            if not (check.succeeded and expect[kind] in check.stdout):
                raise RuntimeError(f"wrong output: {check.stdout[:200]!r} {check.stderr[:200]!r}")
        except Exception as exc:  # wagi without component support, or a failing run
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
            figures[kind] = {"available": False, "reason": reason}
            continue
        timing = time_runs(labels[kind], engine, component, count, argv, REQUEST_ENV, expect[kind])
        figures[kind] = {"available": True, "timing": timing.as_json(f"component_{kind}")}
        timings.append(timing)
    return figures, timings


def resolve(requested: str) -> list[str]:
    """The engines to benchmark; raises SystemExit with a message if none is usable."""
    if requested == "all":
        names = [n for n in ENGINE_NAMES if importable(n)[0]]
        if not names:
            raise SystemExit("no engine imports on this Python")
        return names
    if requested == "auto":
        from wagi.config import load_config

        config = load_config(ROOT / "bench" / "modules.toml")
        return [choose_engine("auto", config, None).name]
    ok, why = importable(requested)
    if not ok:
        raise SystemExit(f"engine {requested!r}: {why}")
    return [requested]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--engine", default="auto", choices=["auto", "all", *ENGINE_NAMES])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs per case")
    parser.add_argument("--module", type=Path, default=DEFAULT_MODULE, help="a _start module")
    parser.add_argument("--json", type=Path, help="write the figures to this file (one engine)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="write profiles into DIR")
    parser.add_argument(
        "--component-py", type=Path, help="time this componentize-py hello (wasi:cli/run)"
    )
    parser.add_argument(
        "--component-c", type=Path, help="time this C component beside samples/env.wasm"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    module_path = args.module.resolve()
    names = resolve(args.engine)
    if len(names) == 1 and args.engine != "all":
        components = {
            kind: path
            for kind, path in (("py", args.component_py), ("c", args.component_c))
            if path is not None
        }
        return bench_engine(names[0], module_path, args.runs, args.json, args.profile, components)
    if args.json is not None:
        parser.error("--json needs one engine (--engine wasmer or wasmtime)")
    # Several engines: each in a fresh process; this one never creates an engine.
    status = 0
    for name in names:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--engine",
            name,
            "--runs",
            str(args.runs),
            "--module",
            str(module_path),
        ]
        if args.profile is not None:
            command += ["--profile", str(args.profile)]
        status |= subprocess.run(command, stdin=subprocess.DEVNULL).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
