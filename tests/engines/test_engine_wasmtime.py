"""The wasmtime engine against real modules (small WAT programs), no mocks.

Each test writes a module to ``tmp_path`` and runs it through the engine the
way the CGI layer does, checking the bytes and endings docs/cgi.md promises.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from wagi.engines.base import (
    STDERR_LIMIT,
    Ending,
    EngineError,
    Invocation,
    Limits,
    Preopen,
    RunResult,
)
from wagi.engines.cache import ArtifactCache
from wagi.engines.wasmtime.engine import WasmtimeEngine

from ..support.wat import module_text


def make_module(
    tmp_path: Path,
    body: str,
    *,
    data: dict[int, bytes] | None = None,
    pages: int = 1,
    name: str = "module",
) -> Path:
    """Write a WAT module with the shared WASI imports and helpers; data segments at offsets."""
    path = tmp_path / f"{name}.wat"
    path.write_text(module_text(body, data=data, pages=pages))
    return path


HELLO = """
  (func (export "_start") (call $print (i32.const 1024) (i32.const 6)))
"""


@pytest.fixture(scope="module")
def engine() -> WasmtimeEngine:
    return WasmtimeEngine()


def run(engine: WasmtimeEngine, path: Path, **fields: object) -> RunResult:
    return engine.run(engine.load(path), Invocation(**fields))  # type: ignore[arg-type]


def hello(tmp_path: Path) -> Path:
    return make_module(tmp_path, HELLO, data={1024: b"hello\n"}, name="hello")


# -- stdio, argv, env ----------------------------------------------------------


def test_hello_stdout(engine: WasmtimeEngine, tmp_path: Path) -> None:
    result = run(engine, hello(tmp_path))
    assert result.ending is Ending.RETURNED
    assert result.succeeded
    assert result.stdout == b"hello\n"
    assert result.stderr == b""


def test_engine_identity(engine: WasmtimeEngine) -> None:
    import importlib.metadata

    assert engine.name == "wasmtime"
    assert engine.version == importlib.metadata.version("wasmtime")
    caps = engine.capabilities
    assert caps.volumes and caps.read_only_volumes and caps.memory_limit and caps.interruptible


DUMP_ARGS_AND_ENV = """
  (func (export "_start")
    ;; argv strings at 4096, pointers at 2048; sizes at 16/20
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 2048) (i32.const 4096)))
    (call $print (i32.const 4096) (i32.load (i32.const 20)))
    (call $print (i32.const 1024) (i32.const 1))
    ;; environ strings at 8192, pointers at 3072
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 3072) (i32.const 8192)))
    (call $print (i32.const 8192) (i32.load (i32.const 20))))
"""


def test_argv_and_env_exact_and_host_env_does_not_leak(
    engine: WasmtimeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAGI_HOST_SECRET", "must-not-leak")
    path = make_module(tmp_path, DUMP_ARGS_AND_ENV, data={1024: b"\xff"})
    argv = ["/env", "greet=matt", "foo=bar", "ünï"]
    env = {"REQUEST_METHOD": "GET", "X_EMPTY": "", "WITH_EQUALS": "a=b"}
    result = run(engine, path, argv=argv, env=env)
    assert result.ending is Ending.RETURNED
    args, environ = result.stdout.split(b"\xff")
    assert args == b"".join(arg.encode() + b"\0" for arg in argv)
    assert environ.split(b"\0")[:-1] == [f"{k}={v}".encode() for k, v in env.items()]
    assert b"WAGI_HOST_SECRET" not in result.stdout
    assert b"PATH=" not in result.stdout


def test_no_argv_and_no_env(engine: WasmtimeEngine, tmp_path: Path) -> None:
    path = make_module(tmp_path, DUMP_ARGS_AND_ENV, data={1024: b"\xff"})
    result = run(engine, path)
    assert result.ending is Ending.RETURNED
    assert result.stdout == b"\xff"


def test_unencodable_strings_do_not_fail_the_run(engine: WasmtimeEngine, tmp_path: Path) -> None:
    path = make_module(tmp_path, DUMP_ARGS_AND_ENV, data={1024: b"\xff"})
    result = run(engine, path, argv=["/x", "bad\udcff"], env={"K": "v\udcfe"})
    assert result.ending is Ending.RETURNED
    assert b"bad\xef\xbf\xbd" in result.stdout


ECHO_STDIN = """
  (func (export "_start")
    (local $n i32)
    (loop $more
      ;; read into 4096.. (room 61440), iovec at 32, nread at 40
      (i32.store (i32.const 32) (i32.const 4096))
      (i32.store (i32.const 36) (i32.const 61440))
      (if (call $fd_read (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 40))
        (then (call $proc_exit (i32.const 9))))
      (local.set $n (i32.load (i32.const 40)))
      (if (local.get $n)
        (then
          (call $print (i32.const 4096) (local.get $n))
          (br $more)))))
"""


@pytest.mark.parametrize(
    "stdin",
    [b"", b"name=wagi&x=1", bytes(range(256)) * 3, os.urandom(300_000)],
    ids=["empty", "form", "binary", "large"],
)
def test_stdin_bytes_reach_the_module(engine: WasmtimeEngine, tmp_path: Path, stdin: bytes) -> None:
    result = run(engine, make_module(tmp_path, ECHO_STDIN), stdin=stdin)
    assert result.ending is Ending.RETURNED
    assert result.stdout == stdin


def test_the_c_api_binding_matches_this_wasmtime() -> None:
    """wagi calls wasmtime's C library directly: a wasmtime-py that moved it must fail here."""
    import importlib.metadata

    from wagi.engines.wasmtime import capi as wasmtime_capi

    wasmtime_capi.check()  # every symbol present, every structure the expected size
    major = int(importlib.metadata.version("wasmtime").split(".")[0])
    assert 50 <= major < 51, "update the pinned range in setup.cfg after re-checking the C API"


def test_stdin_does_not_carry_over_between_runs(engine: WasmtimeEngine, tmp_path: Path) -> None:
    module = engine.load(make_module(tmp_path, ECHO_STDIN))
    first = engine.run(module, Invocation(stdin=b"secret of request one"))
    second = engine.run(module, Invocation())
    assert first.stdout == b"secret of request one"
    assert second.stdout == b""


VECTORED = """
  (func (export "_start")
    (local $fd i32)
    (local.set $fd (i32.const 1))
    (loop $each
      ;; four iovecs at 16..48, one call, no retry; the module checks nwritten
      (i32.store (i32.const 16) (i32.const 1024)) (i32.store (i32.const 20) (i32.const 2))
      (i32.store (i32.const 24) (i32.const 1026)) (i32.store (i32.const 28) (i32.const 4))
      (i32.store (i32.const 32) (i32.const 1030)) (i32.store (i32.const 36) (i32.const 0))
      (i32.store (i32.const 40) (i32.const 1030)) (i32.store (i32.const 44) (i32.const 6))
      (if (call $fd_write (local.get $fd) (i32.const 16) (i32.const 4) (i32.const 56))
        (then (call $proc_exit (i32.const 7))))
      (if (i32.ne (i32.load (i32.const 56)) (i32.const 12))
        (then (call $proc_exit (i32.const 8))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $each (i32.le_u (local.get $fd) (i32.const 2)))))
"""


def test_vectored_write_delivers_every_buffer(engine: WasmtimeEngine, tmp_path: Path) -> None:
    path = make_module(tmp_path, VECTORED, data={1024: b"aabbbbcccccc"})
    result = run(engine, path)
    assert result.ending is Ending.RETURNED, result
    assert result.stdout == b"aabbbbcccccc"
    assert result.stderr == b"aabbbbcccccc"


def test_write_with_bad_pointer_is_efault(engine: WasmtimeEngine, tmp_path: Path) -> None:
    body = """
      (func (export "_start")
        (i32.store (i32.const 16) (i32.const 65530))
        (i32.store (i32.const 20) (i32.const 100))
        (call $proc_exit
          (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 56))))
    """
    result = run(engine, make_module(tmp_path, body))
    assert result.ending is Ending.EXITED
    assert result.exit_code == 21  # EFAULT
    assert result.stdout == b""


# -- endings -------------------------------------------------------------------


@pytest.mark.parametrize(("code", "ending"), [(0, Ending.RETURNED), (3, Ending.EXITED)])
def test_proc_exit(engine: WasmtimeEngine, tmp_path: Path, code: int, ending: Ending) -> None:
    body = f"""
      (func (export "_start")
        (call $print (i32.const 1024) (i32.const 7))
        (call $proc_exit (i32.const {code}))
        (call $print (i32.const 1024) (i32.const 7)))
    """
    result = run(engine, make_module(tmp_path, body, data={1024: b"before\n"}))
    assert result.ending is ending
    assert result.exit_code == code
    assert result.stdout == b"before\n"


def test_trap(engine: WasmtimeEngine, tmp_path: Path) -> None:
    body = """
      (func (export "_start")
        (call $print (i32.const 1024) (i32.const 3))
        unreachable)
    """
    result = run(engine, make_module(tmp_path, body, data={1024: b"hi\n"}))
    assert result.ending is Ending.TRAPPED
    assert "unreachable" in result.detail
    assert result.stdout == b"hi\n"


def test_other_entrypoint_and_reactor_initialize(engine: WasmtimeEngine, tmp_path: Path) -> None:
    body = """
      (global $ready (mut i32) (i32.const 0))
      (func (export "_initialize") (global.set $ready (i32.const 1)))
      (func (export "handler")
        (if (global.get $ready)
          (then (call $print (i32.const 1024) (i32.const 5)))
          (else (call $print (i32.const 1029) (i32.const 7)))))
    """
    path = make_module(tmp_path, body, data={1024: b"ready", 1029: b"not yet"})
    result = run(engine, path, entrypoint="handler")
    assert result.ending is Ending.RETURNED
    assert result.stdout == b"ready"


def test_exports_are_function_names_only(engine: WasmtimeEngine, tmp_path: Path) -> None:
    body = """
      (global (export "a_global") i32 (i32.const 0))
      (func (export "_start"))
      (func (export "_routes"))
    """
    module = engine.load(make_module(tmp_path, body))
    assert module.exports == frozenset({"_start", "_routes"})
    assert module.path == tmp_path / "module.wat"


# -- timeouts ------------------------------------------------------------------

LOOP_FOREVER = """
  (func (export "_start") (loop $forever (br $forever)))
"""

# Busy-waits (in wasm, where epochs are checked) for the milliseconds stored at 1024.
BUSY_WAIT = """
  (func (export "_start")
    (local $until i64)
    (local.set $until
      (i64.add (call $now) (i64.mul (i64.load (i32.const 1024)) (i64.const 1000000))))
    (loop $spin (br_if $spin (i64.lt_u (call $now) (local.get $until))))
    (call $print (i32.const 1032) (i32.const 4)))
"""


def busy_wait(tmp_path: Path, millis: int) -> Path:
    data = {1024: millis.to_bytes(8, "little"), 1032: b"done"}
    return make_module(tmp_path, BUSY_WAIT, data=data, name=f"busy{millis}")


def test_timeout_stops_an_infinite_loop_and_the_next_run_works(
    engine: WasmtimeEngine, tmp_path: Path
) -> None:
    looping = engine.load(make_module(tmp_path, LOOP_FOREVER, name="loop"))
    started = time.monotonic()
    result = engine.run(looping, Invocation(limits=Limits(timeout=0.5)))
    elapsed = time.monotonic() - started
    assert result.ending is Ending.TIMED_OUT
    assert elapsed >= 0.5  # not before its deadline (no upper bound: that would be a timing test)
    # The engine is usable right away, with and without a timeout.
    quick = engine.load(hello(tmp_path))
    for _ in range(20):
        after = engine.run(quick, Invocation(limits=Limits(timeout=0.05)))
        assert after.ending is Ending.RETURNED
        assert after.stdout == b"hello\n"
    assert engine.run(quick, Invocation()).ending is Ending.RETURNED
    # A run that needs most of its time is not cut short by earlier ticks.
    slow = run(engine, busy_wait(tmp_path, 300), limits=Limits(timeout=1.0))
    assert slow.ending is Ending.RETURNED
    assert slow.stdout == b"done"


def test_a_timeout_does_not_interrupt_a_concurrent_run(
    engine: WasmtimeEngine, tmp_path: Path
) -> None:
    looping = engine.load(make_module(tmp_path, LOOP_FOREVER, name="loop"))
    slow = engine.load(busy_wait(tmp_path, 600))
    endings: list[Ending] = []
    thread = threading.Thread(
        target=lambda: endings.append(
            engine.run(looping, Invocation(limits=Limits(timeout=0.2))).ending
        )
    )
    thread.start()
    result = engine.run(slow, Invocation(limits=Limits(timeout=5.0)))
    thread.join()
    assert endings == [Ending.TIMED_OUT]
    assert result.ending is Ending.RETURNED
    assert result.stdout == b"done"


def test_timeout_covers_the_start_function(engine: WasmtimeEngine, tmp_path: Path) -> None:
    body = """
      (func $spin (loop $forever (br $forever)))
      (start $spin)
      (func (export "_start"))
    """
    result = run(engine, make_module(tmp_path, body), limits=Limits(timeout=0.2))
    assert result.ending is Ending.TIMED_OUT


def test_sleep_past_the_timeout_is_stopped_at_the_deadline(
    engine: WasmtimeEngine, tmp_path: Path
) -> None:
    body = """
      (func (export "_start")
        (call $sleep (i64.const 30000000000))
        (call $print (i32.const 1024) (i32.const 5)))
    """
    path = make_module(tmp_path, body, data={1024: b"awake"})
    started = time.monotonic()
    result = run(engine, path, limits=Limits(timeout=0.3))
    elapsed = time.monotonic() - started
    assert result.ending is Ending.TIMED_OUT
    assert 0.3 <= elapsed < 30  # stopped at the deadline, long before the 30 s sleep ends
    assert result.stdout == b""


def test_short_sleep_within_the_timeout_completes(engine: WasmtimeEngine, tmp_path: Path) -> None:
    body = """
      (func (export "_start")
        (call $sleep (i64.const 50000000))
        (call $print (i32.const 1024) (i32.const 5)))
    """
    path = make_module(tmp_path, body, data={1024: b"awake"})
    for limits in (Limits(timeout=2.0), Limits()):
        started = time.monotonic()
        result = run(engine, path, limits=limits)
        assert result.ending is Ending.RETURNED
        assert result.stdout == b"awake"
        assert time.monotonic() - started >= 0.05


def test_one_ticker_thread_serves_quick_runs_one_after_another(
    engine: WasmtimeEngine, tmp_path: Path
) -> None:
    # A quick run can end before the idle ticker thread, woken for it, gets its lock back
    # (a busy worker's other CPU): the thread must not take that for an idle linger and exit,
    # or every such request pays for a new thread.
    quick = engine.load(hello(tmp_path))
    assert engine.run(quick, Invocation(limits=Limits(timeout=5))).succeeded
    ticker = engine._ticker
    tickers: list[threading.Thread] = []  # held: a thread's ident is reused once it ends
    for _ in range(10):
        time.sleep(0.03)  # past a tick: the ticker has gone idle again
        # A run as quick as it gets: this thread keeps the GIL from start to end, so the
        # woken ticker sees the run only once it is over.
        ticker.start_run()
        ticker.end_run()
        time.sleep(0.03)
        tickers += [t for t in threading.enumerate() if t.name == "wagi-wasmtime-epoch"]
    assert len({id(t) for t in tickers}) == 1
    assert engine.run(quick, Invocation(limits=Limits(timeout=5))).succeeded


# -- memory and output limits --------------------------------------------------

GROW = """
  (func (export "_start")
    ;; 100 more pages = 6.25 MiB; exit 1 if refused
    (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1))
      (then (call $proc_exit (i32.const 1))))
    (call $print (i32.const 1024) (i32.const 5)))
"""


def test_memory_limit(engine: WasmtimeEngine, tmp_path: Path) -> None:
    module = engine.load(make_module(tmp_path, GROW, data={1024: b"grown"}))
    limited = engine.run(module, Invocation(limits=Limits(max_memory=1 << 20)))
    assert limited.ending is Ending.EXITED
    assert limited.exit_code == 1
    unlimited = engine.run(module, Invocation())
    assert unlimited.ending is Ending.RETURNED
    assert unlimited.stdout == b"grown"
    roomy = engine.run(module, Invocation(limits=Limits(max_memory=16 << 20)))
    assert roomy.ending is Ending.RETURNED


def test_initial_memory_beyond_the_limit_refuses_to_instantiate(
    engine: WasmtimeEngine, tmp_path: Path
) -> None:
    module = engine.load(make_module(tmp_path, HELLO, data={1024: b"hello\n"}, pages=64))
    with pytest.raises(EngineError, match="cannot instantiate"):
        engine.run(module, Invocation(limits=Limits(max_memory=1 << 20)))


WRITE_100_TIMES = """
  (func (export "_start")
    (local $i i32)
    (loop $again
      (call $print (i32.const 1024) (i32.const 100))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 100)))))
"""


def test_output_limit(engine: WasmtimeEngine, tmp_path: Path) -> None:
    module = engine.load(make_module(tmp_path, WRITE_100_TIMES, data={1024: b"x" * 100}))
    over = engine.run(module, Invocation(limits=Limits(max_output=1000)))
    assert over.ending is Ending.OUTPUT_TOO_LARGE
    assert over.stdout == b"x" * 1000
    exact = engine.run(module, Invocation(limits=Limits(max_output=10_000)))
    assert exact.ending is Ending.RETURNED
    assert len(exact.stdout) == 10_000
    mid_write = engine.run(module, Invocation(limits=Limits(max_output=1050)))
    assert mid_write.ending is Ending.OUTPUT_TOO_LARGE
    assert len(mid_write.stdout) == 1050


def test_stderr_is_capped(engine: WasmtimeEngine, tmp_path: Path) -> None:
    body = """
      (func (export "_start")
        ;; 2 MiB of zeros to stderr in one write; the module checks nwritten
        (drop (call $write_fd (i32.const 2) (i32.const 65536) (i32.const 2097152)))
        (if (i32.ne (i32.load (i32.const 8)) (i32.const 2097152))
          (then (call $proc_exit (i32.const 4))))
        (call $print (i32.const 1024) (i32.const 2)))
    """
    result = run(engine, make_module(tmp_path, body, data={1024: b"ok"}, pages=40))
    assert result.ending is Ending.RETURNED
    assert result.stdout == b"ok"
    assert result.stderr.startswith(b"\0" * STDERR_LIMIT)
    assert b"1048576 more bytes of stderr dropped" in result.stderr[STDERR_LIMIT:]


# -- volumes -------------------------------------------------------------------

O_CREAT_TRUNC = 1 | 8
RIGHT_FD_READ = 1 << 1
RIGHT_FD_WRITE = 1 << 6
LOOKUP_SYMLINK_FOLLOW = 1


def fs_module(tmp_path: Path, op: str, target: str, *, follow: bool = True) -> Path:
    """Open ``target`` in the first preopen (fd 3); exit with the errno on failure.

    ``read`` prints the file's first 4 KiB; ``write`` writes ``written``.
    """
    encoded = target.encode()
    dirflags = LOOKUP_SYMLINK_FOLLOW if follow else 0
    if op == "read":
        oflags, rights = 0, RIGHT_FD_READ
        then = """
          (i32.store (i32.const 16) (i32.const 8192))
          (i32.store (i32.const 20) (i32.const 4096))
          (local.set $err (call $fd_read (i32.load (i32.const 256)) (i32.const 16)
                                         (i32.const 1) (i32.const 24)))
          (if (local.get $err) (then (call $proc_exit (local.get $err))))
          (call $print (i32.const 8192) (i32.load (i32.const 24)))
        """
    else:
        oflags, rights = O_CREAT_TRUNC, RIGHT_FD_WRITE
        then = """
          (local.set $err
            (call $write_fd (i32.load (i32.const 256)) (i32.const 2048) (i32.const 7)))
          (if (local.get $err) (then (call $proc_exit (local.get $err))))
          (if (i32.ne (i32.load (i32.const 8)) (i32.const 7))
            (then (call $proc_exit (i32.const 200))))
        """
    body = f"""
      (func (export "_start")
        (local $err i32)
        (local.set $err
          (call $path_open (i32.const 3) (i32.const {dirflags})
                           (i32.const 1024) (i32.const {len(encoded)})
                           (i32.const {oflags}) (i64.const {rights}) (i64.const 0)
                           (i32.const 0) (i32.const 256)))
        (if (local.get $err) (then (call $proc_exit (local.get $err))))
        {then})
    """
    name = f"fs_{op}_{abs(hash((target, follow)))}"
    return make_module(tmp_path, body, data={1024: encoded, 2048: b"written"}, name=name)


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A volume with a file, and a secret outside it reachable by symlinks."""
    volume = tmp_path / "volume"
    outside = tmp_path / "outside"
    volume.mkdir()
    outside.mkdir()
    (volume / "inside.txt").write_bytes(b"inside data")
    (volume / "sub").mkdir()
    (volume / "in_link").symlink_to("inside.txt")
    secret = outside / "secret.txt"
    secret.write_bytes(b"host secret")
    (volume / "abs_link").symlink_to(secret)
    (volume / "rel_link").symlink_to(Path("..") / "outside" / "secret.txt")
    (volume / "dir_link").symlink_to(outside, target_is_directory=True)
    return {"volume": volume, "outside": outside, "secret": secret, "modules": tmp_path}


# wasmtime 50 answers EPERM, or ELOOP for a symlink opened without following it;
# ENOTCAPABLE and EACCES would be as good.
DENIED = {2, 32, 63, 76}


def fs_run(
    engine: WasmtimeEngine,
    layout: dict[str, Path],
    op: str,
    target: str,
    *,
    read_only: bool = False,
    follow: bool = True,
) -> RunResult:
    path = fs_module(layout["modules"], op, target, follow=follow)
    preopen = Preopen(guest_path="/data", host_path=layout["volume"], read_only=read_only)
    return run(engine, path, preopens=[preopen])


def test_read_write_volume(engine: WasmtimeEngine, layout: dict[str, Path]) -> None:
    read = fs_run(engine, layout, "read", "inside.txt")
    assert read.ending is Ending.RETURNED
    assert read.stdout == b"inside data"
    write = fs_run(engine, layout, "write", "new.txt")
    assert write.ending is Ending.RETURNED, write
    assert (layout["volume"] / "new.txt").read_bytes() == b"written"


def test_read_only_volume(engine: WasmtimeEngine, layout: dict[str, Path]) -> None:
    read = fs_run(engine, layout, "read", "inside.txt", read_only=True)
    assert read.ending is Ending.RETURNED
    assert read.stdout == b"inside data"
    create = fs_run(engine, layout, "write", "new.txt", read_only=True)
    assert create.ending is Ending.EXITED
    assert not (layout["volume"] / "new.txt").exists()
    overwrite = fs_run(engine, layout, "write", "inside.txt", read_only=True)
    assert overwrite.ending is Ending.EXITED
    assert (layout["volume"] / "inside.txt").read_bytes() == b"inside data"


def assert_cannot_reach_secret(
    engine: WasmtimeEngine, layout: dict[str, Path], target: str
) -> None:
    """Neither reading nor writing ``target`` from inside the volume touches the host secret."""
    read = fs_run(engine, layout, "read", target)
    assert read.ending is Ending.EXITED
    assert read.exit_code in DENIED
    assert b"secret" not in read.stdout
    write = fs_run(engine, layout, "write", target)
    assert write.ending is Ending.EXITED
    assert write.exit_code in DENIED
    assert layout["secret"].read_bytes() == b"host secret"


@pytest.mark.parametrize(
    "target",
    ["../outside/secret.txt", "sub/../../outside/secret.txt", "./../outside/secret.txt"],
)
def test_dotdot_does_not_escape(
    engine: WasmtimeEngine, layout: dict[str, Path], target: str
) -> None:
    assert_cannot_reach_secret(engine, layout, target)


def test_absolute_path_does_not_escape(engine: WasmtimeEngine, layout: dict[str, Path]) -> None:
    assert_cannot_reach_secret(engine, layout, str(layout["secret"]))


@pytest.mark.parametrize("link", ["abs_link", "rel_link", "dir_link/secret.txt"])
@pytest.mark.parametrize("follow", [True, False])
def test_symlinks_out_of_the_volume_are_not_followed(
    engine: WasmtimeEngine, layout: dict[str, Path], link: str, follow: bool
) -> None:
    read = fs_run(engine, layout, "read", link, follow=follow)
    assert read.ending is Ending.EXITED
    assert read.exit_code in DENIED
    assert b"secret" not in read.stdout
    write = fs_run(engine, layout, "write", link, follow=follow)
    assert write.ending is Ending.EXITED
    assert write.exit_code in DENIED
    assert layout["secret"].read_bytes() == b"host secret"


def test_symlink_within_the_volume_works(engine: WasmtimeEngine, layout: dict[str, Path]) -> None:
    read = fs_run(engine, layout, "read", "in_link")
    assert read.ending is Ending.RETURNED
    assert read.stdout == b"inside data"
    denied = fs_run(engine, layout, "write", "in_link", read_only=True)
    assert denied.ending is Ending.EXITED
    assert (layout["volume"] / "inside.txt").read_bytes() == b"inside data"


def test_missing_volume_is_an_engine_error(engine: WasmtimeEngine, tmp_path: Path) -> None:
    preopen = Preopen(guest_path="/data", host_path=tmp_path / "nope")
    with pytest.raises(EngineError, match="nope"):
        run(engine, hello(tmp_path), preopens=[preopen])


# -- loading, artifact cache, errors ---------------------------------------------


def test_artifact_cache_is_shared_and_survives_corruption(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    path = hello(tmp_path)
    first = WasmtimeEngine(cache=ArtifactCache(cache_dir))
    compiled = first.load(path)
    assert not compiled.from_cache
    entries = list(cache_dir.rglob("*.bin"))
    assert len(entries) == 1
    assert entries[0].parent.name == f"wasmtime-{first.version}"
    assert entries[0].stem == compiled.digest

    second = WasmtimeEngine(cache=ArtifactCache(cache_dir))
    cached = second.load(path)
    assert cached.from_cache
    assert second.run(cached, Invocation()).stdout == b"hello\n"

    # A flipped byte in the middle (code wasmtime itself would not check) ...
    artifact = bytearray(entries[0].read_bytes())
    artifact[len(artifact) // 2] ^= 0xFF
    entries[0].write_bytes(artifact)
    third = WasmtimeEngine(cache=ArtifactCache(cache_dir))
    recovered = third.load(path)
    assert not recovered.from_cache
    assert third.run(recovered, Invocation()).stdout == b"hello\n"
    # ... and a file of garbage are both discarded and replaced.
    entries[0].write_bytes(b"garbage")
    fourth = WasmtimeEngine(cache=ArtifactCache(cache_dir))
    assert not fourth.load(path).from_cache
    assert WasmtimeEngine(cache=ArtifactCache(cache_dir)).load(path).from_cache


def test_wasm_binary_and_wat_share_the_cache_key(tmp_path: Path) -> None:
    import wasmtime

    wat = hello(tmp_path)
    binary = tmp_path / "hello.wasm"
    binary.write_bytes(wasmtime.wat2wasm(wat.read_text()))
    cache = ArtifactCache(tmp_path / "cache")
    engine = WasmtimeEngine(cache=cache)
    assert not engine.load(wat).from_cache
    from_binary = engine.load(binary)
    assert from_binary.from_cache
    assert engine.run(from_binary, Invocation()).stdout == b"hello\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.wasm", b"\0asm\x01\0\0\0\xff\xff", "not a valid WebAssembly module"),
        ("random.wasm", bytes(range(256)), "not a WebAssembly module"),
        ("broken.wat", b"(module (func $f (i32.add)))", "not a valid WebAssembly"),
        ("syntax.wat", b"(module (func", "not a valid WebAssembly text module"),
    ],
)
def test_invalid_module_is_an_engine_error(
    engine: WasmtimeEngine, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(EngineError) as raised:
        engine.load(path)
    assert str(path) in str(raised.value)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_file_is_an_engine_error(engine: WasmtimeEngine, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="cannot read module"):
        engine.load(tmp_path / "missing.wasm")


def test_missing_import_fails_at_run(engine: WasmtimeEngine, tmp_path: Path) -> None:
    path = tmp_path / "import.wat"
    path.write_text('(module (import "env" "nothing" (func)) (func (export "_start")))')
    module = engine.load(path)
    with pytest.raises(EngineError, match="nothing"):
        engine.run(module, Invocation())


def test_unknown_or_unusable_entrypoint(engine: WasmtimeEngine, tmp_path: Path) -> None:
    body = '(func (export "takes_args") (param i32))'
    module = engine.load(make_module(tmp_path, HELLO + body, data={1024: b"hello\n"}))
    with pytest.raises(EngineError, match="no exported function 'nope'"):
        engine.run(module, Invocation(entrypoint="nope"))
    with pytest.raises(EngineError, match="exported function 'takes_args' takes parameters"):
        engine.run(module, Invocation(entrypoint="takes_args"))
    component = engine.load(Path(__file__).parents[2] / "samples" / "env.component.wasm")
    with pytest.raises(EngineError, match="a component runs as a whole; it has no export 'nope'"):
        engine.run(component, Invocation(entrypoint="nope"))


def test_module_of_another_engine_is_refused(engine: WasmtimeEngine, tmp_path: Path) -> None:
    other = WasmtimeEngine().load(hello(tmp_path))
    with pytest.raises(EngineError, match="not loaded by this"):
        engine.run(other, Invocation())


def test_concurrent_runs_keep_their_own_output_and_endings(
    engine: WasmtimeEngine, tmp_path: Path
) -> None:
    """Threaded workers share one engine: stdout, stdin and stops stay per run."""
    echo = engine.load(make_module(tmp_path, ECHO_STDIN, name="echo"))
    spam = engine.load(make_module(tmp_path, WRITE_100_TIMES, data={1024: b"x" * 100}))
    failures: list[str] = []

    def worker(number: int) -> None:
        for turn in range(40):
            if (number + turn) % 2:
                data = f"thread {number} turn {turn}".encode() * 20
                result = engine.run(echo, Invocation(stdin=data, limits=Limits(timeout=5)))
                if result.ending is not Ending.RETURNED or result.stdout != data:
                    failures.append(f"echo {result}")
            else:
                limits = Limits(max_output=500, timeout=5)
                result = engine.run(spam, Invocation(limits=limits))
                if result.ending is not Ending.OUTPUT_TOO_LARGE or len(result.stdout) != 500:
                    failures.append(f"spam {result.ending} {len(result.stdout)}")

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_string_blocks_find_the_bytes_where_ctypes_does() -> None:
    """The run path takes a ``bytes`` object's data address from its ``id`` (CPython's
    layout, 3.10-3.13) instead of ``ctypes.cast``; this pins that it is the same address,
    and that the blocks handed to WASI hold exactly the strings."""
    import ctypes

    from wagi.engines.wasmtime import wasi as wasmtime_wasi

    assert wasmtime_wasi._BYTES_DATA is not None, "this CPython lays bytes out otherwise"
    blob = b"some bytes " * 7
    address = ctypes.cast(blob, ctypes.c_void_p).value
    assert id(blob) + wasmtime_wasi._BYTES_DATA == address
    keep, array_address, count = wasmtime_wasi._string_block(["A=1", "", "é ü", "last"])
    assert count == 4
    pointers = (ctypes.c_char_p * 4).from_address(array_address)
    assert [p.decode() for p in pointers] == ["A=1", "", "é ü", "last"]
    with pytest.raises(ValueError, match="NUL"):
        wasmtime_wasi._string_block(["fine", "not\0fine"])
    del keep
