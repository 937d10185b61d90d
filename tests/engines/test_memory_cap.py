"""``cap_memory``: a module's memory maximum rewritten, every other byte kept.

The strongest check of "only the limits changed" is the assembler itself:
capping a module must give exactly the bytes ``wat2wasm`` produces for the
same source with the capped maximum written in. The engine tests at the end
run the real clang-built probe under a limit on both engines.
"""

from __future__ import annotations

import re

import pytest
import wasmtime

from wagi.engines import importable
from wagi.engines.base import Engine, EngineError, Invocation, Limits
from wagi.engines.memory_cap import PAGE_SIZE, MemoryCapError, cap_memory
from wagi.engines.wasmtime.engine import WasmtimeEngine

from ..support.servers import PROBE

MiB = 1 << 20

# A module with something of every kind around its memory: function, table,
# global and tag imports, a table64, GC reference types, data, a start
# function, custom sections. ``{memory}`` is the memory's declaration.
DEFINED = """
(module
  (type $s (struct (field i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "table" (table 1 2 funcref))
  (import "env" "table64" (table i64 3 funcref))
  (import "env" "g" (global (mut i32)))
  (import "env" "ref" (global (ref null $s)))
  (import "env" "func" (global (ref func)))
  (import "env" "tag" (tag (param i32)))
  (memory (export "memory") {memory})
  (global $counter (mut i32) (i32.const 7))
  (func $main (export "_start") (drop (memory.grow (i32.const 1))))
  (start $main)
  (data (i32.const 0) "hello")
  (@custom "wagi-test" "custom bytes stay as they are")
)
"""
IMPORTED = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "table" (table 1 funcref))
  (import "env" "memory" (memory {memory}))
  (import "env" "g" (global i64))
  (import "env" "tag" (tag))
  (func (export "_start") (drop (memory.grow (i32.const 1))))
  (data (i32.const 0) "hello")
)
"""


def asm(source: str) -> bytes:
    return bytes(wasmtime.wat2wasm(source))


def validate(wasm: bytes) -> None:
    wasmtime.Module.validate(wasmtime.Engine(), wasm)


def memory_limits(wasm: bytes) -> tuple[int, int | None]:
    module = wasmtime.Module(wasmtime.Engine(), wasm)
    [memory] = [
        item.type
        for item in [*module.imports, *module.exports]
        if isinstance(item.type, wasmtime.MemoryType)
    ]
    return memory.limits.min, memory.limits.max


@pytest.mark.parametrize("template", [DEFINED, IMPORTED], ids=["defined", "imported"])
@pytest.mark.parametrize(
    ("declared", "max_memory", "capped"),
    [
        ("1", 16 * MiB, "1 256"),  # no maximum: the cap becomes one
        ("1 1000", 16 * MiB, "1 256"),  # a higher maximum is lowered
        ("0", 16 * MiB + PAGE_SIZE - 1, "0 256"),  # rounded down to whole pages
        ("0", 1000, "0 0"),  # less than a page: the memory cannot grow at all
        ("256", 16 * MiB, "256 256"),  # the minimum may equal the cap
        ("2 3", 16 * MiB, "2 3"),  # a lower maximum stays
        ("2 256", 16 * MiB, "2 256"),  # so does an equal one
        ("2", 4 << 30, "2"),  # 4 GiB is every page a 32-bit memory can have
        ("2", 1 << 40, "2"),
        ("2 65536", 1 << 40, "2 65536"),
    ],
)
def test_cap_is_exactly_the_declared_maximum(
    template: str, declared: str, max_memory: int, capped: str
) -> None:
    wasm = asm(template.format(memory=declared))
    out = cap_memory(wasm, max_memory)
    assert out == asm(template.format(memory=capped))
    validate(out)
    if declared == capped:
        assert out is wasm  # nothing to change: not even a copy
    else:
        minimum, maximum = capped.split()
        assert memory_limits(out) == (int(minimum), int(maximum))


@pytest.mark.parametrize("padding", range(90, 130))
def test_section_sizes_are_re_encoded(padding: int) -> None:
    """Two more bytes take the import section's size across a LEB128 length (127 -> 128)."""
    source = '(module (import "{name}" "memory" (memory {memory})))'
    name = "m" * padding
    out = cap_memory(asm(source.format(name=name, memory="1")), 16 * MiB)
    assert out == asm(source.format(name=name, memory="1 256"))
    validate(out)


def test_module_without_memory_is_unchanged() -> None:
    wasm = asm('(module (func (export "_start")))')
    assert cap_memory(wasm, 0) is wasm


def sections(wasm: bytes) -> list[tuple[int, bytes]]:
    """(id, contents) of every section, parsed independently of the code under test."""
    result, pos = [], 8
    while pos < len(wasm):
        section_id, pos = wasm[pos], pos + 1
        size = shift = 0
        while True:
            byte, pos = wasm[pos], pos + 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        result.append((section_id, wasm[pos : pos + size]))
        pos += size
    return result


def test_probe_changes_only_its_memory_section() -> None:
    """The clang-built probe: every section but the memory section is byte-identical."""
    wasm = PROBE.read_bytes()
    assert memory_limits(wasm) == (2, None)
    out = cap_memory(wasm, 16 * MiB)
    validate(out)
    assert memory_limits(out) == (2, 256)
    before, after = sections(wasm), sections(out)
    assert [s for s in before if s[0] != 5] == [s for s in after if s[0] != 5]
    assert [s[0] for s in before] == [s[0] for s in after]
    assert [s for s in after if s[0] == 5] == [(5, bytes([1, 1, 2, 0x80, 2]))]
    assert wasm[:8] == out[:8]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("(module (memory i64 1))", "memory64"),
        ("(module (memory 1 2 shared))", "shared memory"),
        ('(module (import "env" "mem" (memory 1 2 shared)))', "'env'.'mem' is a shared"),
        ("(module (memory 1) (memory 2))", "the module has 2 memories (multi-memory)"),
        ('(module (import "env" "m" (memory 1)) (memory 1))', "the module has 2 memories"),
        ('(module (import "a" "m" (memory 1)) (import "b" "m" (memory 1)))', "has 2 memories"),
        ("(module (memory 1 (pagesize 1)))", "custom page size"),
    ],
)
def test_what_cannot_be_capped_is_refused(source: str, message: str) -> None:
    with pytest.raises(MemoryCapError, match=re.escape(message)):
        cap_memory(asm(source), 16 * MiB)


@pytest.mark.parametrize("template", [DEFINED, IMPORTED], ids=["defined", "imported"])
def test_minimum_above_the_limit_is_refused(template: str) -> None:
    with pytest.raises(MemoryCapError) as info:
        cap_memory(asm(template.format(memory="300")), 16 * MiB)
    assert str(info.value) == (
        "the module needs 19660800 bytes of memory at start (300 pages of 64 KiB), "
        "more than max_memory 16777216"
    )
    assert isinstance(info.value, ValueError)


def test_not_a_module_is_refused() -> None:
    wasm = asm("(module (memory 1))")
    with pytest.raises(MemoryCapError, match="not a WebAssembly module"):
        cap_memory(b"(module)", MiB)
    with pytest.raises(MemoryCapError, match="unsupported WebAssembly binary version 0d 00 01 00"):
        cap_memory(b"\0asm\x0d\x00\x01\x00", MiB)
    with pytest.raises(MemoryCapError, match="truncated module"):
        cap_memory(wasm[:-1], MiB)
    with pytest.raises(MemoryCapError, match="memory section has 1 unexpected extra bytes"):
        cap_memory(wasm[:-4] + bytes([4]) + wasm[-3:] + b"\0", MiB)
    with pytest.raises(MemoryCapError, match="must not be negative"):
        cap_memory(wasm, -1)


# -- the probe under a limit, on the engines --------------------------------

needs_wasmer = pytest.mark.skipif(not importable("wasmer")[0], reason="wasmer does not import")
HEADERS = b"Content-Type: text/plain\n\n"


@pytest.fixture(scope="module")
def wasmer() -> Engine:
    from wagi.engines.wasmer import WasmerEngine

    return WasmerEngine()


@pytest.fixture(scope="module")
def wasmtime_engine() -> Engine:
    return WasmtimeEngine()


def probe_grow(engine: Engine, mebibytes: int, max_memory: int | None) -> bytes:
    invocation = Invocation(
        argv=["/p", "hdr", f"grow={mebibytes}"], limits=Limits(max_memory=max_memory)
    )
    result = engine.run(engine.load(PROBE), invocation)
    assert result.succeeded, result.detail
    return result.stdout


@needs_wasmer
def test_probe_capped_at_16_mib_on_wasmer(wasmer: Engine) -> None:
    assert probe_grow(wasmer, 4, 16 * MiB) == HEADERS + b"grew\n"
    assert probe_grow(wasmer, 64, 16 * MiB) == HEADERS + b"failed\n"
    assert probe_grow(wasmer, 64, None) == HEADERS + b"grew\n"


@needs_wasmer
@pytest.mark.parametrize("max_memory", [None, 16 * MiB, 8 * MiB + 1, 70 * MiB, MiB, 2 * PAGE_SIZE])
@pytest.mark.parametrize("mebibytes", [1, 4, 7, 64])
def test_wasmer_and_wasmtime_agree(
    wasmer: Engine, wasmtime_engine: Engine, max_memory: int | None, mebibytes: int
) -> None:
    output = probe_grow(wasmer, mebibytes, max_memory)
    assert output == probe_grow(wasmtime_engine, mebibytes, max_memory)
    # The probe starts with 128 KiB; malloc needs a little more than it hands out.
    expected = b"grew\n" if max_memory is None or mebibytes * MiB < max_memory else b"failed\n"
    assert output == HEADERS + expected


@needs_wasmer
def test_both_engines_refuse_a_limit_below_the_initial_memory(
    wasmer: Engine, wasmtime_engine: Engine
) -> None:
    """The probe starts with 2 pages; neither engine runs it under 1 page."""
    for engine in (wasmer, wasmtime_engine):
        with pytest.raises(EngineError):
            probe_grow(engine, 1, PAGE_SIZE)
