"""The wasmtime engine: runs WASI modules through wasmtime-py.

How the pieces fit, and why:

- One :class:`wasmtime.Engine`, one :class:`wasmtime.Linker` and one
  :class:`wasmtime.InstancePre` per loaded module are built once; a run only
  creates a Store, a WasiConfig and an instance (the cheap part).
- stdout/stderr: wasmtime's WASI ``fd_write`` writes only the first buffer of
  a vectored write. That is a legal short write, but toolchains that ignore
  short writes lose output, and the SPEC requires every byte. So the Linker
  shadows ``wasi_snapshot_preview1.fd_write`` with a host function that, for
  fds 1 and 2, copies *all* buffers from the guest's memory into per-run
  buffers. The same function enforces the response-size limit on stdout
  and caps stderr.
- Other fds still need WASI's own ``fd_write``. A host function cannot call it
  directly, because WASI finds the guest's memory through the *calling
  instance*, and a call made from the host has none. A tiny forwarding module,
  instantiated lazily in the run's store, imports the guest's memory,
  re-exports it as ``memory`` and calls WASI. The calling instance is then the
  forwarder, and its ``memory`` is the guest's memory.
- Timeouts use epoch interruption. A single ticker thread per engine
  advances the epoch every ``tick`` seconds, but only while some timed run
  is active. A run's deadline is a number of ticks after the epoch at its
  start. Every tick is spaced evenly, and a run sets its deadline relative to
  the epoch when it starts, so a tick meant for an earlier run cannot cut a
  later one short. For the same reason, concurrent runs in one engine
  (threaded workers) cannot interrupt each other.
- Epochs are only checked in wasm code, so a guest sleeping in the host
  (``poll_oneoff`` with a clock) would outlive its timeout. ``poll_oneoff`` is
  shadowed too: a sleep that would pass the deadline sleeps only until the
  deadline and then ends the run as timed out.
- A host function ends a run (output limit, sleep past the deadline) by
  recording why and setting the store's epoch deadline to "now". The guest
  then traps at its next call or loop. Raising from the host function would
  go through wasmtime-py's process-wide exception slot, which concurrent
  runs share.

Importing this module loads the wasmtime library but creates no engine, so
it is safe in the gunicorn master. :class:`WasmtimeEngine` must be built in a
worker.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import math
import os
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import wasmtime

from wagi.outbound_http import (
    DENY_ALL,
    IMPORT_MODULE,
    SIGNATURES,
    GuestMemoryError,
    HttpError,
    OutboundPolicy,
    OutboundSession,
)

from .base import (
    STDERR_LIMIT,
    Capabilities,
    Ending,
    Engine,
    EngineError,
    Invocation,
    Limits,
    LoadedModule,
    RunResult,
    read_module,
)
from .cache import ArtifactCache, content_hash

__all__ = ["WasmtimeEngine", "WasmtimeModule"]

_WASI = "wasi_snapshot_preview1"

# WASI errno values (wasi_snapshot_preview1).
_EDQUOT = 19
_EFAULT = 21
_EFBIG = 22
_EINTR = 27
_EINVAL = 28

_U32 = 0xFFFFFFFF

_DEFAULT_TICK = 0.01
"""Seconds between epoch ticks while a timed run is active. A timeout fires between
``timeout`` and ``timeout + 2 * tick`` after the run starts."""

_TICKER_LINGER = 2.0
"""Seconds the ticker thread waits for another timed run before it exits. This keeps
one thread alive under load and lets an unused engine be freed."""

_NO_DEADLINE = 1 << 62
"""Epoch deadline for untimed runs. With epoch interruption enabled, a store's
deadline starts at 0, which would trap at once."""

_FORWARDED = {
    "fd_write": "i32 i32 i32 i32",
    "poll_oneoff": "i32 i32 i32 i32",
    # The write budget's (see _bind_write_budget).
    "fd_pwrite": "i32 i32 i32 i64 i32",
    "fd_allocate": "i32 i64 i64",
    "path_open": "i32 i32 i32 i32 i32 i64 i64 i32 i32",
    "path_create_directory": "i32 i32 i32",
    "path_symlink": "i32 i32 i32 i32 i32",
    "path_link": "i32 i32 i32 i32 i32 i32 i32",
}
"""The WASI functions host functions call through the forwarder, and their parameters."""


def _forwarder_wat() -> str:
    imports = "".join(
        f'(import "{_WASI}" "{name}" (func ${name} (param {params}) (result i32)))\n'
        for name, params in _FORWARDED.items()
    )
    exports = "".join(
        f'(func (export "{name}") (param {params}) (result i32) (call ${name} '
        + " ".join(f"(local.get {i})" for i in range(len(params.split())))
        + "))\n"
        for name, params in _FORWARDED.items()
    )
    memory = '(import "wagi" "memory" (memory 0)) (export "memory" (memory 0))\n'
    return f"(module\n{imports}{memory}{exports})"


_FORWARDER_WAT = _forwarder_wat()
"""Calls WASI on behalf of a host function (see the module docstring)."""

# wasmtime-py's raw C bindings, for stdin from bytes (see _set_stdin).
_ffi: Any
try:
    from wasmtime import _ffi
except ImportError:  # pragma: no cover - layout of a future wasmtime-py
    _ffi = None


def _one_line(message: str) -> str:
    """wasmtime's messages span several indented lines; logs want one."""
    return " ".join(message.split())


class _RunContext:
    """What the host functions need during one run, kept in a thread-local."""

    __slots__ = (
        "clock_origin_ns",
        "deadline",
        "engine",
        "forwarder",
        "max_output",
        "max_write",
        "outbound",
        "outbound_policy",
        "stderr",
        "stderr_dropped",
        "stdout",
        "stopped",
        "store",
        "written",
    )

    def __init__(
        self,
        engine: WasmtimeEngine,
        store: wasmtime.Store,
        max_output: int | None,
        deadline: float | None,
        clock_origin_ns: int,
    ) -> None:
        self.engine = engine
        self.store = store
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stderr_dropped = 0
        self.max_output = max_output
        self.deadline = deadline
        """``time.monotonic()`` value at which the run times out."""
        self.clock_origin_ns = clock_origin_ns
        """``time.monotonic_ns()`` when the WasiConfig was made: WASI's monotonic zero."""
        self.stopped: Ending | None = None
        """Set when a host function ended the run (output limit, sleep past the deadline)."""
        self.forwarder: Mapping[str, Any] | None = None
        self.max_write: int | None = None
        """``Limits.max_write``: the run's file write budget, charged in :attr:`written`."""
        self.written = 0
        self.outbound_policy: OutboundPolicy | None = None
        self.outbound: OutboundSession | None = None
        """Made at the run's first outbound HTTP call."""

    def outbound_session(self) -> OutboundSession:
        if self.outbound is None:
            self.outbound = OutboundSession(
                self.outbound_policy or DENY_ALL,
                self.deadline,
                on_deadline=lambda: self.stop(Ending.TIMED_OUT),
            )
        return self.outbound

    def stop(self, ending: Ending) -> None:
        """End the run: the guest traps at its next epoch check (a call or loop).

        A host function could raise instead, but wasmtime-py carries a host
        function's exception back through one process-wide slot, where a
        concurrent run in another thread can pick it up. Here nothing is raised.
        The caller's context is the store's, so this is what the C API would do
        for a caller.
        """
        if self.stopped is None:
            self.stopped = ending
        self.store.set_epoch_deadline(0)

    def forward_charged(
        self, caller: wasmtime.Caller, name: str, cost: int, written_ptr: int, *args: int
    ) -> int:
        """Call WASI's ``name`` if ``cost`` bytes fit the write budget, then charge them.

        With ``written_ptr``, what is charged is the count WASI wrote there (the bytes a
        write really wrote), not ``cost``.
        """
        if self.max_write is None:
            return self.forward(caller, name, *args)
        if self.written + cost > self.max_write:
            return _EDQUOT
        result = self.forward(caller, name, *args)
        if result == 0:
            if written_ptr >= 0:
                base, size = _guest_memory(caller)
                if written_ptr + 4 <= size:
                    cost = struct.unpack("<I", ctypes.string_at(base + written_ptr, 4))[0]
            self.written += cost
        return result

    def forward_write(
        self, caller: wasmtime.Caller, name: str, iovs: int, count: int, nwritten: int, *args: int
    ) -> int:
        """Forward a write of the iovecs at ``iovs`` to a file, within the write budget."""
        if self.max_write is None:
            return self.forward(caller, name, *args)
        base, size = _guest_memory(caller)
        iovs &= _U32
        count &= _U32
        if iovs + 8 * count > size:
            return _EFAULT
        raw = ctypes.string_at(base + iovs, 8 * count) if count else b""
        total = sum(length for _ptr, length in struct.iter_unpack("<II", raw))
        return self.forward_charged(caller, name, total, nwritten & _U32, *args)

    def forward(self, caller: wasmtime.Caller, name: str, *args: int) -> int:
        """Call WASI's own ``name`` for the guest, through the forwarding module."""
        if self.forwarder is None:
            self.forwarder = self.engine._instantiate_forwarder(caller)
        func = self.forwarder[name]
        assert isinstance(func, wasmtime.Func)
        result = func(caller, *args)
        assert isinstance(result, int)
        return result


def _guest_memory(caller: wasmtime.Caller) -> tuple[int, int]:
    """Base address and length of the calling instance's ``memory`` export."""
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise wasmtime.Trap("wagi: the module does not export its memory as 'memory'")
    size = memory.data_len(caller)
    if size == 0:
        return 0, 0
    return ctypes.addressof(memory.data_ptr(caller).contents), size


def _make_host_functions(local: threading.local) -> tuple[Any, Any]:
    """Build the shadowing ``fd_write`` and ``poll_oneoff``.

    They close over the thread-local only, not over the engine: the Linker keeps
    them alive in a process-wide table, and a reference to the engine from
    there would keep every engine (and its Linker) alive forever.
    """

    def fd_write(caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
        ctx: _RunContext | None = getattr(local, "ctx", None)
        if ctx is None:
            raise wasmtime.Trap("wagi: fd_write called outside a run")
        if fd != 1 and fd != 2:
            return ctx.forward_write(
                caller, "fd_write", iovs, iovs_len, nwritten, fd, iovs, iovs_len, nwritten
            )
        if ctx.stopped is not None:
            return _EFBIG
        base, size = _guest_memory(caller)
        iovs &= _U32
        count = iovs_len & _U32
        nwritten &= _U32
        if iovs + 8 * count > size or nwritten + 4 > size:
            return _EFAULT
        pairs = list(struct.iter_unpack("<II", ctypes.string_at(base + iovs, 8 * count)))
        total = 0
        for ptr, length in pairs:
            if ptr + length > size:
                return _EFAULT
            total += length
        if total > _U32:
            return _EINVAL
        if fd == 1:
            out = ctx.stdout
            room = None if ctx.max_output is None else ctx.max_output - len(out)
            for ptr, length in pairs:
                if room is not None and length > room:
                    out += ctypes.string_at(base + ptr, room)
                    ctx.stop(Ending.OUTPUT_TOO_LARGE)
                    return _EFBIG
                if length:
                    out += ctypes.string_at(base + ptr, length)
                    if room is not None:
                        room -= length
        else:
            err = ctx.stderr
            for ptr, length in pairs:
                keep = min(length, STDERR_LIMIT - len(err))
                if keep > 0:
                    err += ctypes.string_at(base + ptr, keep)
                ctx.stderr_dropped += length - max(keep, 0)
        ctypes.memmove(base + nwritten, struct.pack("<I", total), 4)
        return 0

    def poll_oneoff(
        caller: wasmtime.Caller, subs: int, events: int, nsubs: int, nevents: int
    ) -> int:
        ctx: _RunContext | None = getattr(local, "ctx", None)
        if ctx is None:
            raise wasmtime.Trap("wagi: poll_oneoff called outside a run")
        if ctx.deadline is not None:
            wait = _clock_wait(caller, subs & _U32, nsubs & _U32, ctx.clock_origin_ns)
            if wait is not None:
                remaining = ctx.deadline - time.monotonic()
                if wait > remaining:
                    if remaining > 0:
                        time.sleep(remaining)
                    ctx.stop(Ending.TIMED_OUT)
                    return _EINTR
        return ctx.forward(caller, "poll_oneoff", subs, events, nsubs, nevents)

    return fd_write, poll_oneoff


def _clock_wait(caller: wasmtime.Caller, subs: int, nsubs: int, origin_ns: int) -> float | None:
    """Seconds a ``poll_oneoff`` call would block, if it only waits on clocks.

    Returns ``None`` when the call has an fd subscription (stdin and files are
    always ready, so WASI returns at once), an unknown clock, or bad pointers
    (WASI reports those itself).
    """
    base, size = _guest_memory(caller)
    if nsubs == 0 or subs + 48 * nsubs > size:
        return None
    raw = ctypes.string_at(base + subs, 48 * nsubs)
    wait: float | None = None
    for offset in range(0, 48 * nsubs, 48):
        tag = raw[offset + 8]
        if tag != 0:  # fd_read / fd_write subscription
            return None
        clock_id, timeout, _precision, flags = struct.unpack_from("<I4xQQH", raw, offset + 16)
        if flags & 1:  # subscription_clock_abstime
            if clock_id == 0:  # realtime
                now = time.time_ns()
            elif clock_id == 1:  # monotonic, counted from the WasiConfig's creation
                now = time.monotonic_ns() - origin_ns
            else:
                return None
            seconds = max(0, timeout - now) / 1e9
        elif clock_id in (0, 1):
            seconds = timeout / 1e9
        else:
            return None
        wait = seconds if wait is None else min(wait, seconds)
    return wait


class _CallerMemory:
    """The calling instance's ``memory`` export, for :mod:`wagi.outbound_http` (one call)."""

    __slots__ = ("_base", "_caller", "_size")

    def __init__(self, caller: wasmtime.Caller) -> None:
        self._caller = caller
        self._base = -1
        self._size = 0

    def _address(self, ptr: int, length: int) -> int:
        if self._base < 0:
            memory = self._caller.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                raise GuestMemoryError(HttpError.MEMORY_NOT_FOUND)
            self._size = size = memory.data_len(self._caller)
            self._base = ctypes.addressof(memory.data_ptr(self._caller).contents) if size else 0
        if ptr + length > self._size:
            raise GuestMemoryError(HttpError.MEMORY_ACCESS_ERROR)
        return self._base + ptr

    def read(self, ptr: int, length: int) -> bytes:
        address = self._address(ptr, length)
        return ctypes.string_at(address, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        address = self._address(ptr, len(data))
        if data:
            ctypes.memmove(address, data, len(data))


def _bind_outbound_http(linker: wasmtime.Linker, local: threading.local) -> None:
    """Define the ``wasi_experimental_http`` functions: each forwards to the run's session.

    The run's state is reached through ``local.ctx`` (a :class:`_RunContext`); the
    session is made at the run's first call, so modules that never call pay nothing.
    """
    i32 = wasmtime.ValType.i32()
    for name, count in SIGNATURES.items():

        def host(caller: wasmtime.Caller, *args: int, _name: str = name) -> int:
            ctx: _RunContext | None = getattr(local, "ctx", None)
            if ctx is None:
                raise wasmtime.Trap(f"wagi: {IMPORT_MODULE}.{_name} called outside a run")
            return ctx.outbound_session().call(_name, _CallerMemory(caller), *args)

        ty = wasmtime.FuncType([i32] * count, [i32])
        linker.define_func(IMPORT_MODULE, name, ty, host, access_caller=True)


_ENTRY_COST = 4096
"""What creating a file, directory or link costs against the write budget (one block)."""

_O_CREAT = 1


def _bind_write_budget(linker: wasmtime.Linker, local: threading.local) -> None:
    """Shadow the WASI functions that make files grow or appear, to charge ``Limits.max_write``.

    ``fd_write`` is already shadowed for stdout; its other fds are charged there. Runs
    without a budget only pay the detour through the forwarder.
    """
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()

    def context(name: str) -> _RunContext:
        ctx: _RunContext | None = getattr(local, "ctx", None)
        if ctx is None:
            raise wasmtime.Trap(f"wagi: {name} called outside a run")
        return ctx

    def fd_pwrite(caller: wasmtime.Caller, *args: int) -> int:
        _fd, iovs, count, _offset, nwritten = args
        return context("fd_pwrite").forward_write(caller, "fd_pwrite", iovs, count, nwritten, *args)

    def fd_allocate(caller: wasmtime.Caller, *args: int) -> int:
        length = max(args[2], 0)
        return context("fd_allocate").forward_charged(caller, "fd_allocate", length, -1, *args)

    def path_open(caller: wasmtime.Caller, *args: int) -> int:
        ctx = context("path_open")
        if args[4] & _O_CREAT:
            return ctx.forward_charged(caller, "path_open", _ENTRY_COST, -1, *args)
        return ctx.forward(caller, "path_open", *args)

    def creating(name: str) -> Any:
        def create(caller: wasmtime.Caller, *args: int) -> int:
            return context(name).forward_charged(caller, name, _ENTRY_COST, -1, *args)

        return create

    functions = {
        "fd_pwrite": ([i32, i32, i32, i64, i32], fd_pwrite),
        "fd_allocate": ([i32, i64, i64], fd_allocate),
        "path_open": ([i32, i32, i32, i32, i32, i64, i64, i32, i32], path_open),
        "path_create_directory": ([i32] * 3, creating("path_create_directory")),
        "path_symlink": ([i32] * 5, creating("path_symlink")),
        "path_link": ([i32] * 7, creating("path_link")),
    }
    for name, (params, func) in functions.items():
        linker.define_func(_WASI, name, wasmtime.FuncType(params, [i32]), func, access_caller=True)


class _EpochTicker:
    """Advances one engine's epoch every ``tick`` seconds while a timed run is active.

    One thread per engine, started on demand and stopped after ``_TICKER_LINGER``
    idle seconds. A run costs one lock round-trip at its start and end. The
    thread is woken only when the first timed run starts after an idle period.
    """

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine
        self._tick = tick
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._thread: threading.Thread | None = None
        self._idle = False

    def start_run(self) -> None:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="wagi-wasmtime-epoch", daemon=True
                )
                self._thread.start()
            elif self._idle:
                self._cond.notify()

    def end_run(self) -> None:
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        with self._cond:
            next_tick = time.monotonic() + self._tick
            while True:
                if self._active == 0:
                    self._idle = True
                    self._cond.wait(_TICKER_LINGER)
                    self._idle = False
                    if self._active == 0:
                        self._thread = None
                        return
                    next_tick = time.monotonic() + self._tick
                    continue
                remaining = next_tick - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._engine.increment_epoch()
                # A late ticker skips ticks rather than bunching them: a deadline
                # may come a little late, never early.
                next_tick = max(next_tick, time.monotonic()) + self._tick


class WasmtimeModule(LoadedModule):
    """A module compiled by one :class:`WasmtimeEngine`, with its imports pre-resolved."""

    def __init__(
        self,
        *,
        path: Path,
        module: wasmtime.Module,
        digest: str,
        from_cache: bool,
        owner: WasmtimeEngine,
        instance_pre: wasmtime.InstancePre | None,
        link_error: str | None,
    ) -> None:
        self.path = path
        self.module = module
        self.digest = digest
        """SHA-256 of the wasm bytes (the artifact-cache key)."""
        self.from_cache = from_cache
        """Whether the compiled code came from the artifact cache."""
        self._owner = owner
        self._instance_pre = instance_pre
        self._link_error = link_error
        functions = {
            export.name: export.type
            for export in module.exports
            if isinstance(export.type, wasmtime.FuncType)
        }
        self.exports = frozenset(functions)
        self._callable = frozenset(name for name, ty in functions.items() if not ty.params)
        """Exports with no parameters: the only kind a CGI run can call."""

    def __repr__(self) -> str:
        return f"<WasmtimeModule {str(self.path)!r} {self.digest[:12]}>"


class WasmtimeEngine(Engine):
    """wasmtime, with every stdout/stderr byte delivered, timeouts and memory limits."""

    name = "wasmtime"
    capabilities = Capabilities(
        volumes=True,
        read_only_volumes=True,
        memory_limit=True,
        interruptible=True,
        outbound_http=True,
        write_budget=True,
    )

    def __init__(self, cache: ArtifactCache | None = None, *, tick: float = _DEFAULT_TICK) -> None:
        """Create the wasmtime engine. Call this in a worker, never in the gunicorn master."""
        self._cache = cache
        self._version = importlib.metadata.version("wasmtime")
        config = wasmtime.Config()
        config.epoch_interruption = True
        # wasmtime's own code cache stays off (its default): wagi keeps an artifact
        # cache of its own, in a directory the operator chose, shared by every worker.
        self._engine = wasmtime.Engine(config)
        self._ticker = _EpochTicker(self._engine, tick)
        self._tick = tick
        self._local = threading.local()

        fd_write, poll_oneoff = _make_host_functions(self._local)
        i32 = wasmtime.ValType.i32()
        four_i32_to_i32 = wasmtime.FuncType([i32, i32, i32, i32], [i32])
        self._linker = wasmtime.Linker(self._engine)
        self._linker.allow_shadowing = True
        self._linker.define_wasi()
        self._linker.define_func(_WASI, "fd_write", four_i32_to_i32, fd_write, access_caller=True)
        self._linker.define_func(
            _WASI, "poll_oneoff", four_i32_to_i32, poll_oneoff, access_caller=True
        )
        _bind_outbound_http(self._linker, self._local)
        _bind_write_budget(self._linker, self._local)
        # WASI's own functions, for the forwarder.
        self._wasi_linker = wasmtime.Linker(self._engine)
        self._wasi_linker.define_wasi()
        self._forwarder_module: wasmtime.Module | None = None

    @property
    def version(self) -> str:
        return self._version

    # -- loading ---------------------------------------------------------------

    def load(self, path: Path) -> WasmtimeModule:
        path = Path(path)
        wasm = read_module(path)
        digest = content_hash(wasm)
        module, from_cache = self._compile(path, wasm, digest)
        instance_pre: wasmtime.InstancePre | None = None
        link_error: str | None = None
        try:
            instance_pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            # An unknown import fails each run, not the load, per the Engine contract.
            link_error = _one_line(str(exc))
        return WasmtimeModule(
            path=path,
            module=module,
            digest=digest,
            from_cache=from_cache,
            owner=self,
            instance_pre=instance_pre,
            link_error=link_error,
        )

    def _compile(self, path: Path, wasm: bytes, digest: str) -> tuple[wasmtime.Module, bool]:
        """Fetch from the artifact cache, or compile and store."""
        cache = self._cache
        if cache is not None:
            payload = cache.get(self.name, self._version, digest)
            if payload is not None:
                try:
                    return wasmtime.Module.deserialize(self._engine, payload), True
                except wasmtime.WasmtimeError:
                    cache.discard(self.name, self._version, digest)
        try:
            module = wasmtime.Module(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise EngineError(
                f"{path}: not a valid WebAssembly module: {_one_line(str(exc))}"
            ) from None
        if cache is not None:
            cache.put(self.name, self._version, digest, bytes(module.serialize()))
        return module, False

    def _instantiate_forwarder(self, caller: wasmtime.Caller) -> Mapping[str, Any]:
        """Instantiate the forwarding module over the guest's memory in the run's store."""
        if self._forwarder_module is None:
            self._forwarder_module = wasmtime.Module(self._engine, _FORWARDER_WAT)
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise wasmtime.Trap("wagi: the module does not export its memory as 'memory'")
        imports = [self._wasi_linker.get(caller, _WASI, name) for name in _FORWARDED]
        imports.append(memory)
        instance = wasmtime.Instance(caller, self._forwarder_module, imports)
        return instance.exports(caller)

    # -- running ---------------------------------------------------------------

    def prepare(self, module: LoadedModule, limits: Limits) -> None:
        """Refuse at start-up a module that could never run: an import nothing provides, or
        memory that starts above ``limits.max_memory``.

        Only memories the module imports or exports are visible here; WASI modules
        export theirs. Any other one still fails at instantiation, per request.
        """
        if not isinstance(module, WasmtimeModule):
            return
        if module._link_error:
            raise EngineError(f"{module.path}: cannot be instantiated: {module._link_error}")
        if limits.max_memory is None:
            return
        types = [i.type for i in module.module.imports] + [e.type for e in module.module.exports]
        for ty in types:
            if isinstance(ty, wasmtime.MemoryType):
                start = ty.limits.min * 65536
                if start > limits.max_memory:
                    raise EngineError(
                        f"{module.path}: the module needs {start} bytes of memory at start, "
                        f"more than max_memory {limits.max_memory}"
                    )

    def run(self, module: LoadedModule, invocation: Invocation) -> RunResult:
        if not isinstance(module, WasmtimeModule) or module._owner is not self:
            raise EngineError(f"{module.path}: module was not loaded by this wasmtime engine")
        entrypoint = invocation.entrypoint
        if module._instance_pre is None:
            raise EngineError(f"{module.path}: cannot instantiate: {module._link_error}")
        if entrypoint not in module.exports:
            raise EngineError(f"{module.path}: no exported function {entrypoint!r}")
        if entrypoint not in module._callable:
            raise EngineError(f"{module.path}: exported function {entrypoint!r} takes parameters")

        limits = invocation.limits
        store = wasmtime.Store(self._engine)
        clock_origin_ns = time.monotonic_ns()
        wasi = wasmtime.WasiConfig()
        _configure_wasi(wasi, module.path, invocation)
        store.set_wasi(wasi)
        if limits.max_memory is not None:
            store.set_limits(memory_size=limits.max_memory)

        deadline: float | None = None
        if limits.timeout is not None:
            store.set_epoch_deadline(max(1, math.ceil(limits.timeout / self._tick)) + 1)
            deadline = time.monotonic() + limits.timeout
            self._ticker.start_run()
        else:
            store.set_epoch_deadline(_NO_DEADLINE)

        ctx = _RunContext(self, store, limits.max_output, deadline, clock_origin_ns)
        ctx.outbound_policy = invocation.outbound
        ctx.max_write = limits.max_write
        self._local.ctx = ctx
        ending = Ending.RETURNED
        exit_code = 0
        detail = ""
        try:
            try:
                instance = module._instance_pre.instantiate(store)
            except (wasmtime.Trap, wasmtime.ExitTrap):
                raise
            except wasmtime.WasmtimeError as exc:
                raise EngineError(
                    f"{module.path}: cannot instantiate: {_one_line(str(exc))}"
                ) from None
            exports = instance.exports(store)
            if "_initialize" in module._callable and entrypoint != "_start":
                _call(exports, "_initialize", store)
            _call(exports, entrypoint, store)
            if ctx.stopped is not None:  # stopped, but returned before an epoch check
                ending = ctx.stopped
        except EngineError:
            raise
        except wasmtime.ExitTrap as exc:
            if ctx.stopped is not None:
                ending = ctx.stopped
            elif exc.code != 0:
                ending = Ending.EXITED
                exit_code = exc.code
        except wasmtime.Trap as exc:
            if ctx.stopped is not None:
                ending = ctx.stopped
            elif exc.trap_code is wasmtime.TrapCode.INTERRUPT:
                ending = Ending.TIMED_OUT
            else:
                ending = Ending.TRAPPED
                detail = exc.message
        except wasmtime.WasmtimeError as exc:
            if ctx.stopped is not None:
                ending = ctx.stopped
            else:
                ending = Ending.TRAPPED
                detail = str(exc)
        finally:
            self._local.ctx = None
            if deadline is not None:
                self._ticker.end_run()
            if ctx.outbound is not None:
                ctx.outbound.close_all()

        stderr = bytes(ctx.stderr)
        if ctx.stderr_dropped:
            stderr += b"\n[wagi: %d more bytes of stderr dropped]\n" % ctx.stderr_dropped
        if ctx.outbound is not None:
            stderr += ctx.outbound.report()
        return RunResult(
            ending=ending,
            stdout=bytes(ctx.stdout),
            stderr=stderr,
            exit_code=exit_code,
            detail=detail,
        )


def _call(exports: Mapping[str, Any], name: str, store: wasmtime.Store) -> None:
    func = exports[name]
    assert isinstance(func, wasmtime.Func)
    func(store)


def _configure_wasi(wasi: wasmtime.WasiConfig, path: Path, invocation: Invocation) -> None:
    """argv, env (only the invocation's), stdin and preopens for one run."""
    try:
        wasi.argv = list(invocation.argv)
        wasi.env = list(invocation.env.items())
    except UnicodeEncodeError:
        # Lone surrogates (say, from undecodable request bytes) cannot cross into
        # WASI's UTF-8 strings; replace them rather than fail the request.
        wasi.argv = [_utf8_safe(arg) for arg in invocation.argv]
        wasi.env = [(_utf8_safe(k), _utf8_safe(v)) for k, v in invocation.env.items()]
    if invocation.stdin:
        _set_stdin(wasi, invocation.stdin)
    for preopen in invocation.preopens:
        try:
            wasi.preopen_dir(
                str(preopen.host_path), preopen.guest_path, fs_mutable=not preopen.read_only
            )
        except wasmtime.WasmtimeError:
            raise EngineError(
                f"{path}: cannot open volume {preopen.host_path} (for {preopen.guest_path})"
            ) from None


def _utf8_safe(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _set_stdin(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Give the module ``data`` as stdin.

    wasmtime-py's public API only takes a file path. The C API's
    ``wasi_config_set_stdin_bytes`` (reached through wasmtime-py's ``_ffi``) takes
    the bytes themselves and costs ~2 µs instead of ~16 µs for a memfd. The memfd
    path is the fallback should ``_ffi`` change.
    """
    if _ffi is not None and hasattr(_ffi, "wasi_config_set_stdin_bytes"):
        vec = _ffi.wasm_byte_vec_t()
        # Points into ``data`` itself; wasm_byte_vec_new makes wasmtime's own copy.
        source = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_ubyte))
        _ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), source)
        # Takes ownership of the vector's contents.
        _ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))
        return
    _set_stdin_memfd(wasi, data)  # pragma: no cover - exercised by a test forcing it


def _set_stdin_memfd(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """stdin from an anonymous memory file; wasmtime opens its own description of it."""
    fd = os.memfd_create("wagi-stdin", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        wasi.stdin_file = f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
