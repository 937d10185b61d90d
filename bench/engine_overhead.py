#!/usr/bin/env python3
"""In-process micro-benchmark: what one ``engine.run`` of a module costs, without HTTP.

Usage::

    python bench/engine_overhead.py [--engine auto|wasmer|wasmtime|all] [--runs N]
                                    [--module samples/hello.wat]

It creates an engine directly (``wagi.engines.create_engine``), loads the module
and runs it ``N`` times with ``engine.run(module, Invocation(...))``, timing every
call. Two baselines are measured in the same process with the same count:

- a Python loop that does nothing, the cost of the loop itself;
- a loop that only constructs the :class:`~wagi.engines.base.Invocation`.

"run - Invocation" is then what the engine adds per run: a store, WASI state,
an instance, the call, and copying stdout back.

The engine is created in this process and nothing is forked after that (a
forked child of a process that compiled with cranelift hangs). With
``--engine all`` this process creates no engine at all: it starts a fresh
``python bench/engine_overhead.py --engine NAME`` for each engine instead.
"""

from __future__ import annotations

import argparse
import array
import gc
import importlib.metadata
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wagi.engines import ENGINE_NAMES, create_engine, importable  # noqa: E402
from wagi.engines.base import Engine, Invocation, LoadedModule  # noqa: E402
from wagi.policy import choose_engine  # noqa: E402

DEFAULT_MODULE = ROOT / "samples" / "hello.wat"
DEFAULT_RUNS = 2000
WARMUP_RUNS = 20

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


@dataclass
class Timing:
    label: str
    total_s: float
    count: int
    per_call_ns: array.array[int] | None = None
    """Each call timed on its own (engine runs only; too coarse for the baselines)."""

    @property
    def mean_us(self) -> float:
        return self.total_s / self.count * 1e6

    def percentile_us(self, p: float) -> float | None:
        if not self.per_call_ns:
            return None
        ordered = sorted(self.per_call_ns)
        rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
        return ordered[rank] / 1000


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


def time_runs(
    label: str,
    engine: Engine,
    module: LoadedModule,
    count: int,
    argv: list[str],
    env: Mapping[str, str],
    expect: bytes,
    per_call: array.array[int] | None = None,
) -> tuple[Timing, int]:
    """``count`` runs, each timed; returns the timing and how many runs did not succeed.

    ``per_call`` receives each run's time: allocated beforehand, so that
    recording the timings does not show up as memory growth.
    """
    if per_call is None:
        per_call = timings_buffer(count)
    failures = 0
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for i in range(count):
        t0 = clock()
        result = engine.run(module, Invocation(entrypoint="_start", argv=argv, env=env))
        per_call[i] = clock() - t0
        if not result.succeeded or expect not in result.stdout:
            failures += 1
    return Timing(label, time.perf_counter() - start, count, per_call), failures


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


def bench_engine(name: str, module_path: Path, runs: int) -> int:
    """Benchmark engine ``name`` in this process. Returns an exit status."""
    mem_start = memory_kib()
    with tempfile.TemporaryDirectory(prefix="wagi-bench-") as tmp:
        t0 = time.perf_counter()
        engine = create_engine(name, Path(tmp) / "cache")
        t1 = time.perf_counter()
        module = engine.load(module_path)
        t2 = time.perf_counter()
    mem_loaded = memory_kib()

    argv = ["/hello"]
    small_env = {"GREETING": "hello"}
    expect = b"Hello, world!" if module_path.name == "hello.wat" else b""

    # Warm up: the first runs fill caches (and the wasmtime ticker, if any).
    _, failures = time_runs("warm-up", engine, module, WARMUP_RUNS, argv, small_env, expect)
    if failures:
        print(f"{name}: {failures}/{WARMUP_RUNS} warm-up runs failed", file=sys.stderr)
        return 1
    buffers = (timings_buffer(runs), timings_buffer(runs))
    mem_warm = memory_kib()

    gc.collect()
    baseline = noop_loop(runs)
    construct = time_loop(
        "construct Invocation",
        runs,
        lambda: Invocation(entrypoint="_start", argv=argv, env=small_env),
    )
    run_small, fail_small = time_runs(
        "run (argv + 1 env var)", engine, module, runs, argv, small_env, expect, buffers[0]
    )
    run_cgi, fail_cgi = time_runs(
        f"run (argv + {len(CGI_ENV)} CGI vars)",
        engine,
        module,
        runs,
        argv,
        CGI_ENV,
        expect,
        buffers[1],
    )
    mem_end = memory_kib()

    print(
        f"\n== engine.run micro-benchmark: {name} {engine_version(name)} "
        f"(Python {platform.python_version()}), {module_path.relative_to(ROOT)}, {runs} runs"
    )
    print(
        f"create engine {(t1 - t0) * 1e3:.1f} ms, load module {(t2 - t1) * 1e3:.1f} ms "
        "(fresh artifact cache)"
    )
    header = (
        f"{'case':<30} {'mean µs':>10} {'p50 µs':>9} {'p99 µs':>9} "
        f"{'vs no-op µs':>12} {'vs Invocation µs':>17}"
    )
    print(header)
    print("-" * len(header))
    for timing in (baseline, construct, run_small, run_cgi):
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
            f"{timing.label:<30} {fmt_us(timing.mean_us):>10} "
            f"{fmt_us(timing.percentile_us(50)):>9} {fmt_us(timing.percentile_us(99)):>9} "
            f"{vs_noop:>12} {vs_inv:>17}"
        )
    measured = 2 * runs
    growth = mem_end["rss"] - mem_warm["rss"]
    line = (
        f"memory (MiB): RSS {fmt_mib(mem_start['rss'])} at start, "
        f"{fmt_mib(mem_loaded['rss'])} with engine + module, {fmt_mib(mem_warm['rss'])} warm, "
        f"{fmt_mib(mem_end['rss'])} after {measured} runs "
        f"(growth {growth:+d} KiB, {growth * 1024 / measured:+.0f} B/run)"
    )
    if "pss" in mem_end:
        line += f"; PSS {fmt_mib(mem_warm['pss'])} -> {fmt_mib(mem_end['pss'])}"
    print(line)
    failures = fail_small + fail_cgi
    if failures:
        print(f"WARNING: {failures} of {measured} runs did not succeed", file=sys.stderr)
        return 1
    return 0


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
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    module_path = args.module.resolve()
    names = resolve(args.engine)
    if len(names) == 1 and args.engine != "all":
        return bench_engine(names[0], module_path, args.runs)
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
        status |= subprocess.run(command, stdin=subprocess.DEVNULL).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
