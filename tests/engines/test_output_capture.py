"""Output capture on every engine: whose bytes go where, and what a hostile write costs."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.servers import ENGINES, MODULES, Server
from tests.support.wat import WatModule
from wagi.engines import engine_class
from wagi.engines.base import Ending, Engine, Invocation, Limits, Preopen

HEAD = "Content-Type: text/plain\n\n"


def make_engine(name: str) -> Engine:
    if name == "wasmer":
        # The wasmer engine maps volumes only for experiments like this one (wagi refuses
        # them there: its WASI layer does not confine a module).
        return engine_class(name)(unconfined_volumes=True)  # type: ignore[call-arg]
    return engine_class(name)()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    return make_engine(request.param)


def run_module(engine: Engine, tmp_path: Path, module: WatModule, **fields: object) -> object:
    path = tmp_path / "module.wat"
    path.write_text(module.text())
    return engine.run(engine.load(path), Invocation(**fields))  # type: ignore[arg-type]


def test_a_file_renumbered_onto_fd_1_gets_the_writes_to_fd_1(
    engine: Engine, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    module = (
        WatModule()
        .print(HEAD + "to the response\n")
        .renumber_file_onto(3, "out.txt", 1)  # volumes from fd 3, on every engine
        .print("to the file\n")
        .print("to stderr\n", fd=2)
    )
    result = run_module(engine, tmp_path, module, preopens=[Preopen("/data", data)])
    assert result.ending is Ending.RETURNED, result  # type: ignore[attr-defined]
    assert result.stdout == (HEAD + "to the response\n").encode()  # type: ignore[attr-defined]
    assert (data / "out.txt").read_bytes() == b"to the file\n"
    assert result.stderr == b"to stderr\n"  # type: ignore[attr-defined]


def test_stdout_renumbered_elsewhere_is_still_the_response(engine: Engine, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # fd 1 moves to fd 3 (over the volume's fd); writes to fd 3 are the response now.
    module = WatModule().print(HEAD).print("", fd=1)
    module.steps.append("(drop (call $fd_renumber (i32.const 1) (i32.const 3)))")
    module.print("written to fd 3\n", fd=3).print("fd 1 is closed\n", fd=1)
    result = run_module(engine, tmp_path, module, preopens=[Preopen("/data", data)])
    assert result.ending is Ending.RETURNED  # type: ignore[attr-defined]
    assert result.stdout == (HEAD + "written to fd 3\n").encode()  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_module_that_moves_its_stdout_is_answered_through_gunicorn(
    server_factory: Callable[..., Server], engine_name: str
) -> None:
    """renumbered.wat moves stdout over fd 0 (``dup2``-style code does) and writes its whole
    response there, partly in a vectored write, then writes to fd 1, which is closed now."""
    server = server_factory(
        f'[[module]]\nroute = "/moved"\nmodule = "{MODULES / "renumbered.wat"}"\n',
        engine_name,
        workers=1,
    )
    for _ in range(2):  # the second run starts from a fresh fd table
        r = server.get("/moved")
        assert (r.status_code, r.headers["Content-Type"], r.content) == (
            200,
            "text/plain",
            b"written to fd 0, in two buffers\nfd_renumber=0 fd_write(1)=8\n",
        )


IOVEC_BOMB = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 256)
  ;; 2,000,000 iovecs of 8 bytes each at 64: all point at the same 8 bytes. One call.
  (func (export "_start") (local $i i32)
    (loop $fill
      (i32.store (i32.add (i32.const 64) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
      (i32.store (i32.add (i32.const 68) (i32.mul (local.get $i) (i32.const 8))) (i32.const 8))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 2000000))))
    (call $proc_exit (call $fd_write (i32.const 1) (i32.const 64) (i32.const 2000000)
      (i32.const 16)))))
"""


def test_one_write_with_millions_of_iovecs_is_refused_cheaply(tmp_path: Path) -> None:
    engine = make_engine("wasmtime")
    path = tmp_path / "bomb.wat"
    path.write_text(IOVEC_BOMB)
    module = engine.load(path)
    limits = Limits(timeout=5, max_memory=16 << 20, max_output=64 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    result = engine.run(module, Invocation(limits=limits))
    elapsed = time.monotonic() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    # EINVAL (28), as POSIX writev answers past IOV_MAX: no buffer was copied.
    assert (result.ending, result.exit_code) == (Ending.EXITED, 28)
    assert result.stdout == b""
    print(f"iovec bomb: {elapsed * 1000:.1f} ms, peak RSS grew {grown_mib:.1f} MiB")
    assert elapsed < 5, "the host worked past the module's timeout"
    assert grown_mib < 64
