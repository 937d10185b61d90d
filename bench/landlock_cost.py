"""What the kernel wall costs: confining a thread, and a run in a confined thread.

    python bench/landlock_cost.py [--engine auto|all|wasmer|wasmtime] [--runs N]

Prints, for each engine that imports here:

- the time to confine a fresh thread (``restrict_current_thread``: ruleset, rules,
  ``prctl``, ``landlock_restrict_self``), median over 200 threads, for 0, 1 and 4 rules;
- the time per run of ``probe.wasm`` reading a file from its volume, in an
  unconfined thread and in a thread confined to that volume. The two kinds of
  thread alternate three times, each with its own engine, so drift hits both.
  (wasmtime does its file I/O on threads the first callers created, see
  ``tests/unit/test_landlock.py``: its "confined" figure is the caller's cost.)

Figures are medians of rounds of ``--runs`` runs; compare them within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wagi.engines import ENGINE_NAMES, importable  # noqa: E402
from wagi.engines.base import Engine, Invocation, Preopen  # noqa: E402
from wagi.execution.landlock import PathRule, availability, restrict_current_thread  # noqa: E402

PROBE = ROOT / "tests" / "modules" / "probe.wasm"


def in_thread(body: Callable[[], object]) -> None:
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()


def confine_cost(volume: Path) -> None:
    for count in (0, 1, 4):
        rules = [PathRule(volume, writable=bool(i % 2)) for i in range(count)]
        samples: list[float] = []
        for _ in range(200):
            in_thread(
                lambda rules=rules, samples=samples: samples.append(
                    restrict_current_thread(rules, deny_network=True).seconds
                )
            )
        print(f"confine a thread, {count} rules: median {statistics.median(samples) * 1e6:.0f} µs")


def make_engine(name: str) -> Engine:
    if name == "wasmer":
        from wagi.engines.wasmer import WasmerEngine

        return WasmerEngine(unconfined_volumes=True)
    from wagi.engines.wasmtime.engine import WasmtimeEngine

    return WasmtimeEngine()


def run_cost(name: str, volume: Path, runs: int) -> None:
    invocation = Invocation(
        argv=["/p", "hdr", "readfile=/data/a.txt"], preopens=[Preopen("/data", volume)]
    )
    per_run: dict[str, list[float]] = {"an unconfined": [], "a confined": []}

    def measure(kind: str) -> None:
        engine = make_engine(name)
        module = engine.load(PROBE)
        for _ in range(runs // 10):
            engine.run(module, invocation)
        if kind == "a confined":
            restrict_current_thread([PathRule(volume, writable=True)], deny_network=True)
        assert engine.run(module, invocation).stdout.endswith(b"in the volume\n")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(runs):
                engine.run(module, invocation)
            per_run[kind].append((time.perf_counter() - started) / runs)

    for _ in range(3):
        for kind in per_run:
            in_thread(lambda kind=kind: measure(kind))
    for kind, samples in per_run.items():
        print(
            f"{name}: one run in {kind} thread: median {statistics.median(samples) * 1e6:.0f} µs"
            f" (best round {min(samples) * 1e6:.0f} µs)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="all")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    ok, abi, why = availability()
    if not ok:
        sys.exit(f"no Landlock here: {why}")
    print(f"Landlock ABI {abi}")
    names = [n for n in ENGINE_NAMES if importable(n)[0]] if args.engine == "all" else [args.engine]
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp)
        (volume / "a.txt").write_text("in the volume\n")
        confine_cost(volume)
        for name in names:
            run_cost(name, volume, args.runs)


if __name__ == "__main__":
    main()
