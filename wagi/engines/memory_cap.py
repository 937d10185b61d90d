"""Limit a module's linear memory by rewriting its declared maximum.

WebAssembly memory grows in 64 KiB pages, and a memory whose type declares a
maximum of ``M`` pages can never grow past ``M``: ``memory.grow`` returns -1,
on every engine. An engine with no store limiter (wasmer-python) can therefore
enforce ``max_memory`` by compiling a copy of the module whose memory type
declares the limit.

:func:`cap_memory` lowers the maximum of the module's one memory, defined or
imported, and copies every other byte of the module unchanged::

    >>> import wasmtime
    >>> wasm = wasmtime.wat2wasm("(module (memory 1))")
    >>> capped = cap_memory(wasm, 16 << 20)       # (memory 1 256)
    >>> cap_memory(capped, 64 << 20) == capped    # 256 pages is already lower
    True

It refuses, with :class:`MemoryCapError`, what it cannot cap honestly: several
memories (the limit is for the whole instance), shared and 64-bit memories,
custom page sizes, a memory that needs more than the limit at start, and bytes
that are not a WebAssembly core module. Only the section headers and the import
and memory sections are parsed; validating the rest is the compiler's job.
"""

from __future__ import annotations

__all__ = ["PAGE_SIZE", "MemoryCapError", "cap_memory"]

PAGE_SIZE = 65536
"""Bytes in a WebAssembly page (without the custom-page-sizes proposal)."""

_MAX_PAGES = 65536
"""Pages a 32-bit memory can address (4 GiB)."""

_HEADER = b"\0asm\x01\0\0\0"
_IMPORT_SECTION = 2
_MEMORY_SECTION = 5

# Import descriptor kinds.
_FUNC, _TABLE, _MEMORY, _GLOBAL, _TAG = range(5)

# Limits flags.
_HAS_MAX = 0x01
_SHARED = 0x02
_INDEX64 = 0x04
_PAGE_SIZE = 0x08

# Reference types that are followed by a heap type (the GC proposal's ``ref`` and ``ref null``).
_REF_WITH_HEAP_TYPE = (0x63, 0x64)


class MemoryCapError(ValueError):
    """The module's memory cannot be capped; the message says why."""


class _Reader:
    """A cursor over the module's bytes that reports truncation precisely."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MemoryCapError(f"truncated module: unexpected end at byte {self.pos}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self, bits: int = 32) -> int:
        result = shift = 0
        while True:
            start = self.pos
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift >= bits:
                raise MemoryCapError(f"malformed LEB128 integer at byte {start}")
        if result >> bits:
            raise MemoryCapError(f"integer too large at byte {start}")
        return result

    def sleb(self) -> None:
        """Skip a signed LEB128 (a heap type index)."""
        for _ in range(5):
            if not self.byte() & 0x80:
                return
        raise MemoryCapError(f"malformed LEB128 integer at byte {self.pos}")

    def skip(self, count: int) -> None:
        if self.end - self.pos < count:
            raise MemoryCapError(f"truncated module: unexpected end at byte {self.end}")
        self.pos += count

    def name(self) -> str:
        size = self.uleb()
        self.skip(size)
        return self.data[self.pos - size : self.pos].decode("utf-8", "replace")

    def ref_type(self) -> None:
        if self.byte() in _REF_WITH_HEAP_TYPE:
            self.sleb()

    def limits(self) -> tuple[int, int, int | None]:
        """``(flags, min, max)`` of a table or memory type."""
        flags = self.byte()
        if flags > 0x0F:
            raise MemoryCapError(f"unknown limits flags 0x{flags:02x} at byte {self.pos - 1}")
        bits = 64 if flags & _INDEX64 else 32
        minimum = self.uleb(bits)
        maximum = self.uleb(bits) if flags & _HAS_MAX else None
        if flags & _PAGE_SIZE:
            self.uleb()
        return flags, minimum, maximum


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _capped_limits(reader: _Reader, cap: int, max_bytes: int, what: str) -> tuple[bytes, bool]:
    """Read one memory type; return its capped encoding and whether that differs."""
    start = reader.pos
    flags, minimum, maximum = reader.limits()
    if flags & _INDEX64:
        raise MemoryCapError(f"{what} is a 64-bit memory (memory64), which cannot be capped")
    if flags & _SHARED:
        raise MemoryCapError(
            f"{what} is a shared memory (threads); wagi runs no threads and cannot cap it"
        )
    if flags & _PAGE_SIZE:
        raise MemoryCapError(f"{what} has a custom page size, which cannot be capped")
    if minimum > cap:
        raise MemoryCapError(
            f"the module needs {minimum * PAGE_SIZE} bytes of memory at start "
            f"({minimum} pages of 64 KiB), more than max_memory {max_bytes}"
        )
    if (maximum is not None and maximum <= cap) or (maximum is None and cap == _MAX_PAGES):
        return reader.data[start : reader.pos], False
    return bytes([_HAS_MAX]) + _uleb(minimum) + _uleb(cap), True


def _check_one_memory(count: int) -> None:
    if count > 1:
        raise MemoryCapError(
            f"the module has {count} memories (multi-memory); max_memory is a limit for an "
            "instance with one memory"
        )


def _import_section(body: _Reader, cap: int, max_bytes: int) -> tuple[bytes, int]:
    """The section's new contents and how many memories it imports."""
    out = bytearray()
    memories = 0
    copied = body.pos
    for _ in range(body.uleb()):
        what = f"the memory imported as {body.name()!r}.{body.name()!r}"
        kind = body.byte()
        if kind == _FUNC:
            body.uleb()
        elif kind == _TABLE:
            body.ref_type()
            body.limits()
        elif kind == _MEMORY:
            memories += 1
            _check_one_memory(memories)
            start = body.pos
            limits, changed = _capped_limits(body, cap, max_bytes, what)
            if changed:
                out += body.data[copied:start] + limits
                copied = body.pos
        elif kind == _GLOBAL:
            body.ref_type()  # a value type: one byte, or a reference type with its heap type
            body.byte()  # mutability
        elif kind == _TAG:
            body.byte()  # attribute
            body.uleb()
        else:
            raise MemoryCapError(f"unknown import kind 0x{kind:02x} at byte {body.pos - 1}")
    if body.pos != body.end:
        raise MemoryCapError(f"import section has {body.end - body.pos} unexpected extra bytes")
    out += body.data[copied : body.end]
    return bytes(out), memories


def _memory_section(body: _Reader, cap: int, max_bytes: int, first: int) -> tuple[bytes, int]:
    """The section's new contents and how many memories it defines."""
    count_start = body.pos
    count = body.uleb()
    out = bytearray(body.data[count_start : body.pos])
    _check_one_memory(first + count)
    for _ in range(count):
        limits, _ = _capped_limits(body, cap, max_bytes, "the module's memory")
        out += limits
    if body.pos != body.end:
        raise MemoryCapError(f"memory section has {body.end - body.pos} unexpected extra bytes")
    return bytes(out), count


def cap_memory(wasm: bytes, max_bytes: int) -> bytes:
    """``wasm`` with its memory unable to grow past ``max_bytes`` (rounded down to pages).

    The memory's maximum becomes the lower of its declared maximum and the
    cap; its minimum, and every byte outside the changed memory types and the
    sizes of their sections, are kept. Returns ``wasm`` itself when nothing
    needs to change. Raises :class:`MemoryCapError` when the module cannot be
    capped.
    """
    if max_bytes < 0:
        raise MemoryCapError(f"max_memory must not be negative, got {max_bytes}")
    cap = min(max_bytes // PAGE_SIZE, _MAX_PAGES)
    if not wasm.startswith(_HEADER):
        if wasm.startswith(b"\0asm"):
            raise MemoryCapError(
                f"unsupported WebAssembly binary version {wasm[4:8].hex(' ')} "
                "(a component, or not a core module of version 1)"
            )
        raise MemoryCapError("not a WebAssembly module (no \\0asm header)")
    reader = _Reader(wasm, len(_HEADER))
    out = bytearray(_HEADER)
    memories = 0
    changed = False
    while reader.pos < len(wasm):
        start = reader.pos
        section = reader.byte()
        size = reader.uleb()
        body_start = reader.pos
        reader.skip(size)
        if section not in (_IMPORT_SECTION, _MEMORY_SECTION):
            out += wasm[start : reader.pos]
            continue
        body = _Reader(wasm, body_start, reader.pos)
        if section == _IMPORT_SECTION:
            contents, found = _import_section(body, cap, max_bytes)
        else:
            contents, found = _memory_section(body, cap, max_bytes, memories)
        memories += found
        if contents == wasm[body_start : reader.pos]:
            out += wasm[start : reader.pos]
        else:
            changed = True
            out += bytes([section]) + _uleb(len(contents)) + contents
    return bytes(out) if changed else wasm
