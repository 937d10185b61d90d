"""The wasmer engine against real wasmer 1.1.0 (the CPython <= 3.10 leg).

Each test writes a small hand-written WAT module to ``tmp_path`` so the
guest's behaviour (how many bytes it reads, how it writes) is exact; toolchain
modules would hide precisely the details these tests pin down.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("wasmer")
pytest.importorskip("wasmer_compiler_cranelift")
wasmtime = pytest.importorskip("wasmtime")

from wagi.engines import importable  # noqa: E402
from wagi.engines.base import (  # noqa: E402
    Ending,
    EngineError,
    Invocation,
    Limits,
    Preopen,
)
from wagi.engines.cache import ArtifactCache, content_hash  # noqa: E402
from wagi.engines.memory_cap import cap_memory  # noqa: E402
from wagi.engines.wasmer import WasmerEngine, WasmerModule  # noqa: E402
from wagi.engines.wasmer.captures import SEAL_SLACK as _SEAL_SLACK  # noqa: E402

from ..support.wat import module_text  # noqa: E402


def wat(body: str, data: str = "") -> str:
    """A module of 17 pages with the shared WASI imports and helpers; ``data`` as written."""
    return module_text(body, pages=17, raw=data)


def flood_wat(fd: int, extra_funcs: str = "", extra_data: str = "") -> str:
    """A module writing 100 x 64 KiB to ``fd``, then ``STALE``: more than any capture holds."""
    return wat(
        f"""
  (func (export "_start") (local $i i32)
    (loop $more
      (call $write (i32.const {fd}) (i32.const 65536) (i32.const 65536))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 100))))
    (call $write (i32.const {fd}) (i32.const 1024) (i32.const 5)))
  {extra_funcs}
""",
        '(data (i32.const 1024) "STALE") ' + extra_data,
    )


HELLO = wat(
    """(func (export "_start") (call $write (i32.const 1) (i32.const 1024) (i32.const 13)))""",
    '(data (i32.const 1024) "hello, world\\n")',
)


@pytest.fixture(scope="module")
def engine() -> WasmerEngine:
    return WasmerEngine()


@pytest.fixture
def load(tmp_path: Path, engine: WasmerEngine) -> Callable[[str], WasmerModule]:
    counter = iter(range(1_000_000))

    def _load(source: str) -> WasmerModule:
        path = tmp_path / f"m{next(counter)}.wasm"
        path.write_bytes(wasmtime.wat2wasm(source))
        return engine.load(path)

    return _load


def test_available_and_identity(engine: WasmerEngine) -> None:
    ok, why = importable("wasmer")
    assert ok, why
    assert engine.name == "wasmer"
    assert engine.version == __import__("wasmer").__version__
    caps = engine.capabilities
    assert not caps.volumes and not caps.read_only_volumes
    assert caps.memory_limit and not caps.interruptible


def test_hello(engine: WasmerEngine, load: Callable[[str], WasmerModule]) -> None:
    module = load(HELLO)
    assert "_start" in module.exports and "memory" not in module.exports
    result = engine.run(module, Invocation(argv=["/hello"]))
    assert result.ending is Ending.RETURNED and result.succeeded
    assert result.stdout == b"hello, world\n"
    assert result.stderr == b""


def test_wat_file_is_assembled(engine: WasmerEngine, tmp_path: Path) -> None:
    path = tmp_path / "hello.wat"
    path.write_text(HELLO)
    result = engine.run(engine.load(path), Invocation(argv=["/hello"]))
    assert result.stdout == b"hello, world\n"


DUMP_ARGS_AND_ENV = wat(
    """
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 4096) (i32.const 8192)))
    (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 20)))
    (call $write (i32.const 1) (i32.const 2048) (i32.const 1))
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 4096) (i32.const 8192)))
    (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 20))))
""",
    '(data (i32.const 2048) "|")',
)


def test_argv_and_env_exact(engine: WasmerEngine, load: Callable[[str], WasmerModule]) -> None:
    invocation = Invocation(
        argv=["/env", "greet=matt", "", "a b"],
        env={"X_ONE": "1", "EMPTY": "", "WITH_EQ": "a=b", "UNI": "é"},
    )
    result = engine.run(load(DUMP_ARGS_AND_ENV), invocation)
    argv, env = result.stdout.split(b"|")
    assert argv.split(b"\0") == [b"/env", b"greet=matt", b"", b"a b", b""]
    assert sorted(env.split(b"\0")[:-1]) == sorted(
        [b"X_ONE=1", b"EMPTY=", b"WITH_EQ=a=b", "UNI=é".encode()]
    )


def test_no_host_env_leak(
    engine: WasmerEngine, load: Callable[[str], WasmerModule], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAGI_HOST_SECRET", "s3cret")
    result = engine.run(load(DUMP_ARGS_AND_ENV), Invocation(argv=["/x"]))
    assert result.stdout == b"/x\0|"
    assert b"s3cret" not in result.stdout


def test_invalid_env_is_engine_error(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    with pytest.raises(EngineError, match="invalid WASI state"):
        engine.run(load(DUMP_ARGS_AND_ENV), Invocation(argv=["/x"], env={"A": "nul\0"}))


ECHO_STDIN = wat(
    """
  ;; echo all of stdin to stdout
  (func (export "_start") (local $n i32)
    (loop $more
      (local.set $n (call $read (i32.const 65536)))
      (if (local.get $n) (then
        (call $write (i32.const 1) (i32.const 65536) (local.get $n))
        (br $more)))))
  ;; read only 3 bytes and echo them
  (func (export "read3")
    (call $write (i32.const 1) (i32.const 65536) (call $read (i32.const 3))))
"""
)


def test_stdin(engine: WasmerEngine, load: Callable[[str], WasmerModule]) -> None:
    body = bytes(range(256)) * 1000
    result = engine.run(load(ECHO_STDIN), Invocation(argv=["/echo"], stdin=body))
    assert result.ending is Ending.RETURNED
    assert result.stdout == body


def test_unread_stdin_does_not_leak_into_next_run(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    """wasmer's Rust-side stdin buffer must not carry request A's bytes to request B."""
    module = load(ECHO_STDIN)
    before = engine.stale_stdin_bytes
    a = engine.run(module, Invocation(entrypoint="read3", stdin=b"AAAAAAAAAAAAAAAAAAAA"))
    assert a.stdout == b"AAA"
    b = engine.run(module, Invocation(stdin=b"BBBBB"))
    assert b.stdout == b"BBBBB"
    assert engine.stale_stdin_bytes - before == 17  # proof the buffer really held them
    c = engine.run(module, Invocation())
    assert c.stdout == b""


NO_NEWLINE = wat(
    """
  (func (export "_start") (call $write (i32.const 1) (i32.const 1024) (i32.const 7)))
  (func (export "then_exit")
    (call $write (i32.const 1) (i32.const 1024) (i32.const 7))
    (call $write (i32.const 2) (i32.const 1024) (i32.const 7))
    (call $proc_exit (i32.const 0)))
  (func (export "then_trap")
    (call $write (i32.const 1) (i32.const 1024) (i32.const 7))
    unreachable)
""",
    '(data (i32.const 1024) "partial")',
)


@pytest.mark.parametrize("entry", ["_start", "then_exit", "then_trap"])
def test_output_without_newline_is_complete_and_does_not_leak(
    engine: WasmerEngine, load: Callable[[str], WasmerModule], entry: str
) -> None:
    """Rust's stdout is a LineWriter: no byte may stay behind for the next run."""
    result = engine.run(load(NO_NEWLINE), Invocation(entrypoint=entry))
    assert result.stdout == b"partial"
    after = engine.run(load(HELLO), Invocation())
    assert after.stdout == b"hello, world\n"


def test_stale_stdout_after_failed_write_does_not_leak(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    """A write refused by the full capture is 'successful' for the guest.

    wasmer then keeps the bytes in Rust's stdout LineWriter, where they would
    open the next request's output; the scrub must discard them. The capture
    is sized ``limit + _SEAL_SLACK``: 64 KiB writes fill it exactly, so the
    final small write is the one refused.
    """
    limit = 65536
    flood = flood_wat(1)
    assert (limit + _SEAL_SLACK) % 65536 == 0 and (limit + _SEAL_SLACK) // 65536 < 100
    result = engine.run(load(flood), Invocation(limits=Limits(max_output=limit)))
    assert result.ending is Ending.OUTPUT_TOO_LARGE
    assert f"wrote at least {limit + _SEAL_SLACK} bytes" in result.detail
    after = engine.run(load(HELLO), Invocation())
    assert after.stdout == b"hello, world\n"


def test_stderr_is_capped_and_does_not_leak(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    """stderr (for the log) keeps 1 MiB and counts what it drops (the rest of the sealed
    capture, 64 KiB writes filling it exactly); writes past it fail and are not kept."""
    flood = flood_wat(
        2,
        '(func (export "small") (call $write (i32.const 2) (i32.const 1040) (i32.const 3)))',
        '(data (i32.const 1040) "ok\\n")',
    )
    module = load(flood)
    result = engine.run(module, Invocation())
    assert result.ending is Ending.RETURNED
    assert result.stderr.endswith(b"\n[wagi: %d more bytes of stderr dropped]\n" % _SEAL_SLACK)
    assert len(result.stderr) < (1 << 20) + 100
    assert engine.run(module, Invocation(entrypoint="small")).stderr == b"ok\n"


def test_vectored_write_delivers_every_buffer(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    """One fd_write with four iovecs, no retry on a short write: every byte must arrive."""
    module = load(
        wat(
            """
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 3))
    (i32.store (i32.const 8) (i32.const 1040)) (i32.store (i32.const 12) (i32.const 4))
    (i32.store (i32.const 16) (i32.const 1056)) (i32.store (i32.const 20) (i32.const 5))
    (i32.store (i32.const 24) (i32.const 1072)) (i32.store (i32.const 28) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 4) (i32.const 40)))
    ;; report nwritten on stderr as 4 raw bytes
    (call $write (i32.const 2) (i32.const 40) (i32.const 4)))
""",
            '(data (i32.const 1024) "one") (data (i32.const 1040) "two\\n") '
            '(data (i32.const 1056) "three") (data (i32.const 1072) "four")',
        )
    )
    result = engine.run(module, Invocation())
    assert result.stdout == b"onetwo\nthreefour"
    assert int.from_bytes(result.stderr, "little") == 16


ENDINGS = wat(
    """
  (func (export "_start"))
  (func (export "exit0") (call $proc_exit (i32.const 0)))
  (func (export "exit3") (call $proc_exit (i32.const 3)))
  (func (export "exit_max") (call $proc_exit (i32.const -1)))
  (func (export "trap") unreachable)
  (func (export "oob") (drop (i32.load (i32.const -1))))
  (func $recurse (export "recurse") (call $recurse))
  ;; a function named like an exit, to show names in trap frames cannot fake one
  (func $WASI_exited_with_code:_0 (export "fake") unreachable)
  (func (export "with_args") (param i32))
"""
)


@pytest.mark.parametrize(
    ("entry", "ending", "code", "detail"),
    [
        ("_start", Ending.RETURNED, 0, ""),
        ("exit0", Ending.RETURNED, 0, ""),
        ("exit3", Ending.EXITED, 3, "exit code 3"),
        ("exit_max", Ending.EXITED, 4294967295, "exit code 4294967295"),
        ("trap", Ending.TRAPPED, 0, "unreachable"),
        ("oob", Ending.TRAPPED, 0, "out of bounds memory access"),
        ("recurse", Ending.TRAPPED, 0, "call stack exhausted"),
        ("fake", Ending.TRAPPED, 0, "unreachable"),
    ],
)
def test_endings_are_distinguished(
    engine: WasmerEngine,
    load: Callable[[str], WasmerModule],
    entry: str,
    ending: Ending,
    code: int,
    detail: str,
) -> None:
    result = engine.run(load(ENDINGS), Invocation(entrypoint=entry))
    assert result.ending is ending
    assert result.exit_code == code
    assert result.detail.startswith(detail)
    assert len(result.detail) < 2100  # a stack overflow message is ~33 MB


def test_missing_or_bad_entrypoint_is_engine_error(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    module = load(ENDINGS)
    with pytest.raises(EngineError, match="no exported function 'nope'"):
        engine.run(module, Invocation(entrypoint="nope"))
    with pytest.raises(EngineError, match="exported function 'with_args' takes parameters"):
        engine.run(module, Invocation(entrypoint="with_args"))


def test_initialize_runs_before_a_non_start_entrypoint(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    module = load(
        wat(
            """
  (global $ready (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $ready (i32.const 1)))
  (func (export "handler")
    (if (global.get $ready) (then (call $write (i32.const 1) (i32.const 1024) (i32.const 5)))))
""",
            '(data (i32.const 1024) "ready")',
        )
    )
    assert engine.run(module, Invocation(entrypoint="handler")).stdout == b"ready"


def test_start_function_trap_is_a_trap(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    module = load(wat('(func $boom unreachable) (start $boom) (func (export "_start"))'))
    assert engine.run(module, Invocation()).ending is Ending.TRAPPED


def test_unknown_import_is_engine_error(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    module = load('(module (import "env" "nope" (func)) (func (export "_start")))')
    with pytest.raises(EngineError, match=re.escape('"env"."nope"')):
        engine.run(module, Invocation())
    # the worker's own stdio survived the failed run
    assert engine.run(load(HELLO), Invocation()).stdout == b"hello, world\n"


def big_writer(total: int, chunk: int = 65536) -> str:
    return wat(
        f"""
  (func (export "_start") (local $left i32)
    (local.set $left (i32.const {total}))
    (loop $more
      (call $write (i32.const 1) (i32.const 65536) (i32.const {chunk}))
      (local.set $left (i32.sub (local.get $left) (i32.const {chunk})))
      (br_if $more (i32.gt_s (local.get $left) (i32.const 0)))))
""",
        '(data (i32.const 65536) "x")',
    )


def test_large_stdout_does_not_deadlock(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    result = engine.run(load(big_writer(1 << 20)), Invocation())
    assert result.ending is Ending.RETURNED
    assert len(result.stdout) == 1 << 20
    assert result.stdout.count(b"x") == 16


@pytest.mark.parametrize(
    ("limit", "ending"),
    [(1 << 20, Ending.RETURNED), ((1 << 20) - 1, Ending.OUTPUT_TOO_LARGE)],
)
def test_output_limit(
    engine: WasmerEngine, load: Callable[[str], WasmerModule], limit: int, ending: Ending
) -> None:
    result = engine.run(load(big_writer(1 << 20)), Invocation(limits=Limits(max_output=limit)))
    assert result.ending is ending
    if ending is Ending.OUTPUT_TOO_LARGE:
        assert result.stdout == b""
        assert str(limit) in result.detail


def test_runaway_writer_is_capped(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    """1 GiB of output against a 1 KiB limit: writes fail past the slack, memory stays bounded."""
    result = engine.run(load(big_writer(1 << 30)), Invocation(limits=Limits(max_output=1024)))
    assert result.ending is Ending.OUTPUT_TOO_LARGE
    match = re.search(r"wrote at least (\d+) bytes", result.detail)
    assert match and 1024 < int(match.group(1)) <= 1024 + (4 << 20)


def test_timeout_is_reported_not_pretended(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    """wasmer cannot interrupt a guest; a run that ends past its timeout is still TIMED_OUT."""
    spin = wat(
        """
  (func (export "_start") (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 200000000)))))
"""
    )
    result = engine.run(load(spin), Invocation(limits=Limits(timeout=0.001)))
    assert result.ending is Ending.TIMED_OUT
    assert "cannot interrupt" in result.detail


def test_worker_stdio_is_restored(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    before = [os.fstat(fd) for fd in (0, 1, 2)]
    for entry in ("_start", "trap", "exit3"):
        engine.run(load(ENDINGS), Invocation(entrypoint=entry))
    after = [os.fstat(fd) for fd in (0, 1, 2)]
    assert [(s.st_dev, s.st_ino) for s in before] == [(s.st_dev, s.st_ino) for s in after]


def test_invalid_module_is_engine_error(engine: WasmerEngine, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\1\0\0\0garbage")
    with pytest.raises(EngineError, match=re.escape(str(bad))):
        engine.load(bad)
    bad_wat = tmp_path / "bad.wat"
    bad_wat.write_text('(module (func (export "x") (i32.add)))')
    with pytest.raises(EngineError, match=re.escape(str(bad_wat))):
        engine.load(bad_wat)
    with pytest.raises(EngineError, match="cannot read"):
        engine.load(tmp_path / "missing.wasm")


def test_cache_reuse_and_corrupt_cache_recovery(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    engine = WasmerEngine(cache=ArtifactCache(cache_dir))
    path = tmp_path / "hello.wasm"
    path.write_bytes(wasmtime.wat2wasm(HELLO))
    engine.load(path)
    [artifact] = list(cache_dir.glob("wasmer-*/*.bin"))
    assert artifact.parent.name.startswith(f"wasmer-{engine.version}-")

    # A second load deserializes instead of compiling.
    compiled = engine._compile
    engine._compile = lambda *a: pytest.fail("compiled despite a cached artifact")  # type: ignore[method-assign]
    assert engine.run(engine.load(path), Invocation()).stdout == b"hello, world\n"
    engine._compile = compiled  # type: ignore[method-assign]

    # Truncated, bit-flipped or foreign artifacts segfault wasmer's deserializer:
    # they must be detected, replaced and never handed to it.
    good = artifact.read_bytes()
    for damaged in (good[:-10], good[:200], good[:100] + b"\xff" * 10 + good[110:], b"junk"):
        artifact.write_bytes(damaged)
        result = engine.run(engine.load(path), Invocation())
        assert result.stdout == b"hello, world\n"
        assert artifact.read_bytes() == good


def test_volumes_are_refused_without_opt_in(
    engine: WasmerEngine, load: Callable[[str], WasmerModule], tmp_path: Path
) -> None:
    volume = Preopen("/data", tmp_path)
    with pytest.raises(EngineError, match="use the wasmtime engine"):
        engine.run(load(HELLO), Invocation(preopens=[volume]))


def test_preopen_fd_layout(load: Callable[[str], WasmerModule], tmp_path: Path) -> None:
    """wasmer shows a virtual '/' at fd 3 and mapped directories from fd 4; wagi moves
    the volumes to fd 3 on, in their order, and the virtual '/' after them."""
    engine = WasmerEngine(unconfined_volumes=True)
    module = load(
        wat(
            """
  (func (export "_start") (local $fd i32)
    (local.set $fd (i32.const 3))
    (loop $more
      (if (i32.eqz (call $fd_prestat_get (local.get $fd) (i32.const 16))) (then
        (i32.store8 (i32.const 2048) (i32.add (i32.const 48) (local.get $fd)))
        (call $write (i32.const 1) (i32.const 2048) (i32.const 2))
        (drop (call $fd_prestat_dir_name
          (local.get $fd) (i32.const 4096) (i32.load (i32.const 20))))
        (call $write (i32.const 1) (i32.const 4096) (i32.load (i32.const 20)))
        (call $write (i32.const 1) (i32.const 2050) (i32.const 1))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br $more)))))
""",
            '(data (i32.const 2049) "=") (data (i32.const 2050) "\\n")',
        )
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    preopens = [Preopen("/data", tmp_path / "a"), Preopen("/etc/conf", tmp_path / "b")]
    result = engine.run(module, Invocation(preopens=preopens))
    # Names come back NUL-terminated and without their leading slash.
    assert result.stdout == b"3=data\0\n4=etc/conf\0\n5=/\0\n"
    with pytest.raises(EngineError, match="read-only"):
        engine.run(module, Invocation(preopens=[Preopen("/r", tmp_path, read_only=True)]))


GROW = wat(
    """
  ;; 100 more pages = 6.25 MiB on top of 17; exit 1 if refused
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1))
      (then (call $proc_exit (i32.const 1))))
    (call $write (i32.const 1) (i32.const 1024) (i32.const 5)))
""",
    '(data (i32.const 1024) "grown")',
)


def test_memory_limit(engine: WasmerEngine, load: Callable[[str], WasmerModule]) -> None:
    """Runs with and without a limit share one loaded module; a limit never leaks into another."""
    module = load(GROW)
    for _ in range(2):
        limited = engine.run(module, Invocation(limits=Limits(max_memory=2 << 20)))
        assert (limited.ending, limited.exit_code, limited.stdout) == (Ending.EXITED, 1, b"")
        unlimited = engine.run(module, Invocation())
        assert (unlimited.ending, unlimited.stdout) == (Ending.RETURNED, b"grown")
        roomy = engine.run(module, Invocation(limits=Limits(max_memory=117 * 65536)))
        assert (roomy.ending, roomy.stdout) == (Ending.RETURNED, b"grown")
        # One page short of the 117 it needs (limits are whole pages: the odd bytes do not count).
        tight = engine.run(module, Invocation(limits=Limits(max_memory=117 * 65536 - 1)))
        assert tight.ending is Ending.EXITED
    assert sorted(module.capped) == [2 << 20, 117 * 65536 - 1, 117 * 65536]


def test_memory_limit_keeps_stdio_working(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    """The capped variant lives in its own Store; its WASI state must come from that Store."""
    module = load(ECHO_STDIN)
    limits = Limits(max_memory=4 << 20)
    result = engine.run(module, Invocation(stdin=b"through the variant", limits=limits))
    assert result.stdout == b"through the variant"
    leftover = engine.run(module, Invocation(entrypoint="read3", stdin=b"XYZxyz", limits=limits))
    assert leftover.stdout == b"XYZ"
    assert engine.run(module, Invocation(stdin=b"next", limits=limits)).stdout == b"next"


def test_initial_memory_beyond_the_limit_is_engine_error(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    """17 pages at start cannot run under 1 MiB (16 pages): refused, with the reason, every time."""
    module = load(HELLO)
    for _ in range(2):
        with pytest.raises(EngineError) as info:
            engine.run(module, Invocation(limits=Limits(max_memory=1 << 20)))
        assert str(info.value) == (
            f"{module.path}: cannot limit its memory: the module needs 1114112 bytes of memory "
            "at start (17 pages of 64 KiB), more than max_memory 1048576"
        )
    with pytest.raises(EngineError, match="more than max_memory 1048576"):
        engine.prepare(module, Limits(max_memory=1 << 20))
    assert engine.run(module, Invocation()).stdout == b"hello, world\n"


def test_declared_maximum_within_the_limit_needs_no_variant(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    module = load(
        HELLO.replace('(memory (export "memory") 17)', '(memory (export "memory") 17 20)')
    )
    engine.prepare(module, Limits(max_memory=64 << 20))
    assert module.capped[64 << 20].module is module.module
    result = engine.run(module, Invocation(limits=Limits(max_memory=64 << 20)))
    assert result.stdout == b"hello, world\n"


def test_memory_variant_is_compiled_once_and_shared_through_the_cache(tmp_path: Path) -> None:
    """``prepare`` (the start-up helper) compiles the variant; workers deserialize it."""
    cache_dir = tmp_path / "cache"
    path = tmp_path / "grow.wasm"
    path.write_bytes(wasmtime.wat2wasm(GROW))
    limits = Limits(max_memory=2 << 20)
    helper = WasmerEngine(cache=ArtifactCache(cache_dir))
    helper.prepare(helper.load(path), limits)
    capped_digest = content_hash(cap_memory(path.read_bytes(), 2 << 20))
    names = sorted(p.name for p in cache_dir.glob("wasmer-*/*.bin"))
    assert names == sorted([f"{content_hash(path.read_bytes())}.bin", f"{capped_digest}.bin"])

    worker = WasmerEngine(cache=ArtifactCache(cache_dir))
    worker._compile = lambda *a: pytest.fail("compiled despite a cached artifact")  # type: ignore[method-assign]
    module = worker.load(path)
    for _ in range(3):
        result = worker.run(module, Invocation(limits=limits))
        assert (result.ending, result.exit_code) == (Ending.EXITED, 1)
    assert worker.run(module, Invocation()).stdout == b"grown"


def test_prepare_without_a_limit_compiles_nothing(
    engine: WasmerEngine, load: Callable[[str], WasmerModule]
) -> None:
    module = load(HELLO)
    engine.prepare(module, Limits(timeout=5))
    assert module.capped == {}
