"""Run modules on real engines in threads confined by the kernel wall, in a fresh process.

``python -m tests.support.wall_scenario SPEC_JSON`` prints a JSON list: for each thread of the
spec, in order, the stdout of each of its runs (or ``"RAISED <message>"``).

A fresh process per scenario, because both engines keep process-wide state that a
thread's confinement does not reach in the same way: wasmer objects belong to the
thread that created them, and wasmtime's WASI does its file I/O on a pool of threads
that the first callers create (they inherit *their* creator's confinement).

Spec::

    {"engine": "wasmer" | "wasmtime",
     "modules": ["/path/probe.wasm", ...],
     "threads": [{"rules": [["/path", writable]] | null,   # null: not confined
                  "preopens": [["/guest", "/host", read_only]],
                  "jobs": [[module_index, ["argv0", ...]], ...]}]}

Each thread creates its own engine, loads the modules, then confines itself (the
engine's files are read before the wall goes up), then runs its jobs.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from wagi.engines.base import Engine, Invocation, Preopen
from wagi.execution.landlock import PathRule, restrict_current_thread


def create_engine(name: str) -> Engine:
    if name == "wasmer":
        from wagi.engines.wasmer import WasmerEngine

        # Its WASI layer does not confine modules: here the wall below must do it alone.
        return WasmerEngine(unconfined_volumes=True)
    from wagi.engines.wasmtime.engine import WasmtimeEngine

    return WasmtimeEngine()


def run_thread(engine_name: str, modules: list[str], spec: dict[str, Any]) -> list[str]:
    engine = create_engine(engine_name)
    loaded = [engine.load(Path(m)) for m in modules]
    if spec["rules"] is not None:
        rules = [PathRule(Path(path), writable) for path, writable in spec["rules"]]
        restrict_current_thread(rules, deny_network=True)
    preopens = [Preopen(guest, Path(host), ro) for guest, host, ro in spec["preopens"]]
    out = []
    for index, argv in spec["jobs"]:
        try:
            result = engine.run(loaded[index], Invocation(argv=argv, preopens=preopens))
        except Exception as exc:
            out.append(f"RAISED {exc}")
            continue
        out.append(result.stdout.decode() if result.succeeded else f"ENDED {result.ending.value}")
    return out


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    results: list[Any] = []
    for thread_spec in spec["threads"]:
        box: dict[str, Any] = {}

        def target(thread_spec: dict[str, Any] = thread_spec, box: dict[str, Any] = box) -> None:
            try:
                box["out"] = run_thread(spec["engine"], spec["modules"], thread_spec)
            except Exception as exc:
                box["out"] = f"RAISED {type(exc).__name__}: {exc}"

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        results.append(box["out"])
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
