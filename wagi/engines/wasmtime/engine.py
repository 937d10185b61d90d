"""The wasmtime engine: WASI modules run through wasmtime's C API.

How the pieces fit, and why:

- Once per engine: a :class:`wasmtime.Engine` (epoch interruption on, the
  pooling instance allocator where the library has it) and one Linker with
  WASI plus wagi's own host functions. Once per module: the compiled code and
  an ``InstancePre`` (imports resolved). A run then only creates a Store and a
  WASI context, instantiates, calls the export and drops the Store, all
  through the C API (:mod:`.capi`): about 15-25 µs instead of the
  ~180 µs of wasmtime-py's classes.
- stdout/stderr: wasmtime's WASI ``fd_write`` writes only the first buffer of
  a vectored write (a legal short write that some toolchains do not retry),
  and wagi delivers every byte (docs/cgi.md, 'Whose bytes go where'; the
  trap: docs/engines.md, 'wasmtime'). wagi's own ``fd_write`` copies *all* buffers,
  straight from guest memory into the run's sink (``Invocation.stdout``, which
  the gateway streams to the client) or a buffer. It is a raw C callback (about
  3-5 µs a write). Writing to a WASI stdout *file* instead would cost no
  Python per write, but two path opens per run (~17 µs) and a rewrite of the
  module to loop over buffers; for CGI modules, which write a few large
  buffers (libc buffers stdout), the callback is the faster trade.
- The callback follows the module's own fd table: fds 1 and 2 are stdout and
  stderr only until the module renumbers or closes them (``fd_renumber``,
  ``fd_close`` are shadowed to keep the map; WASI keeps its own table). A
  write to any other fd goes to WASI's own ``fd_write``.
- Host work is bounded: at most :data:`IOV_MAX` buffers per call (like POSIX
  ``writev``), nothing copied beyond the output limit, the deadline checked at
  every call, bytes go to the sink rather than piling up.
- A host function ends a run by returning a trap (``wasmtime_trap_new``); the
  reason is kept in the run's context. Nothing goes through wasmtime-py's
  process-wide exception slot, so concurrent runs cannot swap errors.
- Calling WASI's own functions from a host function needs a *calling
  instance* whose ``memory`` is the guest's. A tiny forwarding module is
  instantiated lazily in the run's store over the guest's memory.
- Timeouts use epoch interruption: one ticker thread per engine advances the
  epoch every ``tick`` seconds while a timed or streaming run is active, and
  the store's epoch-deadline callback (:meth:`_Run.on_tick`) checks the run's
  deadline and sends held output at every tick. Sleeps (``poll_oneoff`` on
  clocks) are shadowed so they stop at the deadline too.

Importing this module loads the wasmtime library but creates no engine, so it
is safe in the gunicorn master. :class:`WasmtimeEngine` must be built in a
worker.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import struct
import threading
import time
from array import array
from collections.abc import Iterable
from ctypes import byref, c_int, c_void_p
from itertools import accumulate
from pathlib import Path
from typing import Any

import wasmtime

from wagi.engines.base import (
    STDERR_LIMIT,
    Capabilities,
    Ending,
    Engine,
    EngineError,
    Invocation,
    Limits,
    LoadedModule,
    OutputGone,
    OutputTimedOut,
    RunResult,
    is_component,
    read_module,
)
from wagi.engines.cache import ArtifactCache, content_hash
from wagi.engines.wasmtime import capi
from wagi.engines.wasmtime.component import ComponentModule, ComponentRunner, configure_pooling
from wagi.outbound.abi import (
    IMPORT_MODULE,
    SIGNATURES,
    GuestMemoryError,
    HttpError,
    OutboundSession,
)
from wagi.outbound.policy import DENY_ALL

__all__ = ["WasmtimeEngine", "WasmtimeModule"]

capi.check()
lib = capi.lib

_WASI = b"wasi_snapshot_preview1"

# WASI errno values (wasi_snapshot_preview1).
_EDQUOT = 19
_EFAULT = 21
_EINVAL = 28

_U32 = 0xFFFFFFFF

IOV_MAX = 1024
"""Buffers one ``fd_write`` may pass (POSIX's ``IOV_MAX``); more is EINVAL. It bounds
the host's work per call: a module cannot make one call walk millions of buffers."""

_DEFAULT_TICK = 0.01
"""Seconds between epoch ticks while a timed run is active. A timeout fires between
``timeout`` and ``timeout + 2 * tick`` after the run starts."""

_TICKER_LINGER = 2.0
"""Seconds the ticker thread waits for another timed run before it exits."""

_NO_DEADLINE = 1 << 62
"""Epoch deadline for untimed runs (a store's deadline starts at 0, which would trap)."""

_POOL_SLOTS = 256
"""Instances (and memories, tables, stacks) the pooling allocator keeps per engine.
A worker runs one or a few modules at a time; the slots only reserve address space."""

_FORWARDED = {
    "fd_write": "i32 i32 i32 i32",
    "poll_oneoff": "i32 i32 i32 i32",
    "fd_renumber": "i32 i32",
    "fd_close": "i32",
    # The write budget's (see _BUDGETED).
    "fd_pwrite": "i32 i32 i32 i64 i32",
    "fd_allocate": "i32 i64 i64",
    "path_open": "i32 i32 i32 i32 i32 i64 i64 i32 i32",
    "path_create_directory": "i32 i32 i32",
    "path_symlink": "i32 i32 i32 i32 i32",
    "path_link": "i32 i32 i32 i32 i32 i32 i32",
}
"""The WASI functions wagi shadows, and their parameters: each shadow may call WASI's own."""


def _forwarder_wat() -> str:
    imports = "".join(
        f'(import "wasi_snapshot_preview1" "{name}" (func ${name} (param {params}) (result i32)))\n'
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

_STDOUT = 1
_STDERR = 2


def _one_line(message: str) -> str:
    """wasmtime's messages span several indented lines; logs want one."""
    return " ".join(message.split())


class _Stop(Exception):
    """Raised inside a host function to end the run; never leaves the callback."""

    def __init__(self, ending: Ending, detail: str = "") -> None:
        super().__init__(detail)
        self.ending = ending
        self.detail = detail


class _Run:
    """What the host functions need during one run (kept in a thread-local)."""

    __slots__ = (
        "clock_origin_ns",
        "ctx",
        "deadline",
        "detail",
        "engine",
        "file_written",
        "forwarder",
        "max_output",
        "max_write",
        "memory",
        "outbound",
        "outbound_policy",
        "sink",
        "stderr",
        "stderr_dropped",
        "stdout",
        "stopped",
        "streams",
        "written",
    )

    def __init__(
        self,
        engine: WasmtimeEngine,
        ctx: int,
        invocation: Invocation,
        deadline: float | None,
        clock_origin_ns: int,
    ) -> None:
        self.engine = engine
        self.ctx = ctx
        self.sink = invocation.stdout
        """Where stdout goes as it is written; ``None``: into ``stdout``."""
        self.stdout = bytearray()
        self.written = 0
        self.max_output = invocation.limits.max_output
        self.stderr = bytearray()
        self.stderr_dropped = 0
        self.deadline = deadline
        """``time.monotonic()`` value at which the run times out."""
        self.clock_origin_ns = clock_origin_ns
        """``time.monotonic_ns()`` when the WASI context was made: WASI's monotonic zero."""
        self.stopped: Ending | None = None
        self.detail = ""
        self.streams = {1: _STDOUT, 2: _STDERR}
        """Guest fd -> the stream it is, as the module's own fd table says."""
        self.memory: capi.Extern | None = None
        self.forwarder: dict[bytes, capi.Extern] | None = None
        self.max_write = invocation.limits.max_write
        """The run's file write budget (``Limits.max_write``), charged in ``file_written``."""
        self.file_written = 0
        self.outbound_policy = invocation.outbound
        self.outbound: OutboundSession | None = None
        """Made at the run's first outbound HTTP call."""

    def stop(self, ending: Ending, detail: str = "") -> None:
        """End the run at its next host call or epoch tick (from any thread)."""
        if self.stopped is None:
            self.stopped, self.detail = ending, detail

    def outbound_session(self) -> OutboundSession:
        if self.outbound is None:
            self.outbound = OutboundSession(
                self.outbound_policy or DENY_ALL,
                self.deadline,
                on_deadline=lambda: self.stop(Ending.TIMED_OUT),
            )
        return self.outbound

    # -- the write budget --------------------------------------------------------------

    def forward_charged(
        self, caller: int, name: bytes, args: Any, nargs: int, cost: int, written_ptr: int = -1
    ) -> int:
        """Call WASI's ``name`` if ``cost`` bytes fit the write budget, then charge them.

        With ``written_ptr``, what is charged is the count WASI wrote there (the bytes a
        write really wrote), not ``cost``.
        """
        if self.max_write is None:
            return self.forward(caller, name, args, nargs)
        if self.file_written + cost > self.max_write:
            return _EDQUOT
        errno = self.forward(caller, name, args, nargs)
        if errno == 0:
            if written_ptr >= 0:
                base, size = self.guest_memory(caller)
                if written_ptr + 4 <= size:
                    cost = ctypes.c_uint32.from_address(base + written_ptr).value
            self.file_written += cost
        return errno

    def forward_write(
        self, caller: int, name: bytes, args: Any, nargs: int, iovs: int, count: int, nwritten: int
    ) -> int:
        """Forward a write of the iovecs at ``iovs`` to a file, within the write budget."""
        if self.max_write is None:
            return self.forward(caller, name, args, nargs)
        if count > IOV_MAX:
            return _EINVAL
        base, size = self.guest_memory(caller)
        if iovs + 8 * count > size:
            return _EFAULT
        pairs = array("I", ctypes.string_at(base + iovs, 8 * count))
        total = sum(pairs[1::2])
        return self.forward_charged(caller, name, args, nargs, total, nwritten)

    # -- guest memory ------------------------------------------------------------

    def guest_memory(self, caller: int) -> tuple[int, int]:
        """Base address and size of the calling instance's ``memory`` export."""
        memory = self.memory
        if memory is None:
            memory = capi.Extern()
            found = lib.wasmtime_caller_export_get(caller, b"memory", 6, byref(memory))
            if not found or int(memory.kind) != capi.EXTERN_MEMORY:
                raise _Stop(Ending.TRAPPED, "wagi: the module does not export its memory")
            self.memory = memory
        of = byref(memory.of.memory)
        return lib.wasmtime_memory_data(self.ctx, of) or 0, lib.wasmtime_memory_data_size(
            self.ctx, of
        )

    # -- WASI's own functions -------------------------------------------------------

    def forward(self, caller: int, name: bytes, args: Any, nargs: int) -> int:
        """Call WASI's own ``name`` with this call's arguments; returns its errno."""
        if self.forwarder is None:
            self.forwarder = self.engine._instantiate_forwarder(self, caller)
        trap = c_void_p()
        error = lib.wasmtime_func_call_unchecked(
            self.ctx, byref(self.forwarder[name].of.func), args, nargs, byref(trap)
        )
        if error or trap.value:
            raise _Stop(Ending.TRAPPED, f"wagi: WASI {name.decode()} failed")
        return int(args[0].i32)

    # -- output --------------------------------------------------------------------

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _Stop(Ending.TIMED_OUT)

    def write(self, caller: int, stream: int, iovs: int, count: int, nwritten: int) -> int:
        """Deliver every buffer of a vectored write; returns the WASI errno."""
        self.check_deadline()
        if count > IOV_MAX:
            return _EINVAL
        base, size = self.guest_memory(caller)
        if iovs + 8 * count > size or nwritten + 4 > size:
            return _EFAULT
        pairs = array("I", ctypes.string_at(base + iovs, 8 * count))
        total = 0
        for i in range(0, 2 * count, 2):
            end = pairs[i] + pairs[i + 1]
            if end > size:
                return _EFAULT
            total += pairs[i + 1]
        if total > _U32:
            return _EINVAL
        if stream == _STDOUT:
            for i in range(0, 2 * count, 2):
                if pairs[i + 1]:
                    self.deliver(base + pairs[i], pairs[i + 1])
        else:
            for i in range(0, 2 * count, 2):
                length = pairs[i + 1]
                keep = max(0, min(length, STDERR_LIMIT - len(self.stderr)))
                if keep:
                    self.stderr += ctypes.string_at(base + pairs[i], keep)
                self.stderr_dropped += length - keep
        ctypes.c_uint32.from_address(base + nwritten).value = total
        return 0

    def deliver(self, address: int, length: int) -> None:
        """Send ``length`` stdout bytes at ``address`` to the sink, within the output limit."""
        limit = self.max_output
        over = limit is not None and self.written + length > limit
        if over:
            assert limit is not None
            length = limit - self.written
        sink = self.sink
        if sink is None:
            self.stdout += ctypes.string_at(address, length)
        else:
            try:
                sink.write(memoryview((ctypes.c_char * length).from_address(address)).cast("B"))
            except OutputGone as exc:  # the reader went away (client gone, response cut)
                raise _Stop(Ending.CANCELLED, f"stdout: {exc}") from None
            except OutputTimedOut as exc:
                raise _Stop(Ending.TIMED_OUT, str(exc)) from None
        self.written += length
        if over:
            raise _Stop(Ending.OUTPUT_TOO_LARGE)

    def on_tick(self) -> None:
        """Every epoch tick while the guest computes: the deadline, and the sink's tick."""
        now = time.monotonic()
        if self.stopped is not None:  # by another thread (outbound HTTP's deadline)
            raise _Stop(self.stopped, self.detail)
        if self.deadline is not None and now > self.deadline:
            raise _Stop(Ending.TIMED_OUT)
        if self.sink is not None:
            try:
                self.sink.tick()
            except OutputGone as exc:
                raise _Stop(Ending.CANCELLED, f"stdout: {exc}") from None
            except OutputTimedOut as exc:
                raise _Stop(Ending.TIMED_OUT, str(exc)) from None


def _deadline_callback(local: threading.local) -> Any:
    """The store's epoch-deadline callback: :meth:`_Run.on_tick`, then one more tick."""

    def callback(_ctx: int, _env: int, delta: Any, kind: Any) -> int:
        run: _Run | None = getattr(local, "run", None)
        if run is not None:
            try:
                run.on_tick()
            except BaseException as exc:
                if run.stopped is None:
                    stop = exc if isinstance(exc, _Stop) else _Stop(Ending.TRAPPED, repr(exc))
                    run.stopped, run.detail = stop.ending, stop.detail
                return lib.wasmtime_error_new(b"wagi: run stopped") or 0
        delta[0] = 1
        kind[0] = capi.UPDATE_DEADLINE_CONTINUE
        return 0

    return capi.DeadlineCallback(callback)


def _host_function(
    local: threading.local, body: Any
) -> Any:  # -> capi.UncheckedCallback (ctypes has no useful type for it)
    """Wrap ``body(run, caller, args)`` as a raw callback that never lets an exception out."""

    def callback(_env: int, caller: int, args: Any, nargs: int) -> int:
        run: _Run | None = getattr(local, "run", None)
        if run is None:
            message = b"wagi: host function called outside a run"
            return lib.wasmtime_trap_new(message, len(message)) or 0
        try:
            args[0].i32 = body(run, caller, args, nargs)
            if run.stopped is None:
                return 0
        except _Stop as stop:
            if run.stopped is None:
                run.stopped, run.detail = stop.ending, stop.detail
        except BaseException as exc:  # a bug here must end this run only, with a reason
            if run.stopped is None:
                run.stopped, run.detail = Ending.TRAPPED, f"wagi host function failed: {exc!r}"
        message = f"wagi: run stopped ({run.stopped.value})".encode()
        return lib.wasmtime_trap_new(message, len(message)) or 0

    return capi.UncheckedCallback(callback)


def _fd_write(run: _Run, caller: int, args: Any, nargs: int) -> int:
    stream = run.streams.get(args[0].i32)
    if stream is None:
        return run.forward_write(
            caller,
            b"fd_write",
            args,
            nargs,
            args[1].i32 & _U32,
            args[2].i32 & _U32,
            args[3].i32 & _U32,
        )
    return run.write(caller, stream, args[1].i32 & _U32, args[2].i32 & _U32, args[3].i32 & _U32)


def _fd_renumber(run: _Run, caller: int, args: Any, nargs: int) -> int:
    source, target = args[0].i32, args[1].i32
    errno = run.forward(caller, b"fd_renumber", args, nargs)
    if errno == 0:
        stream = run.streams.pop(source, None)
        run.streams.pop(target, None)
        if stream is not None:
            run.streams[target] = stream
    return errno


def _fd_close(run: _Run, caller: int, args: Any, nargs: int) -> int:
    fd = args[0].i32
    errno = run.forward(caller, b"fd_close", args, nargs)
    if errno == 0:
        run.streams.pop(fd, None)
    return errno


def _poll_oneoff(run: _Run, caller: int, args: Any, nargs: int) -> int:
    if run.deadline is not None:
        base, size = run.guest_memory(caller)
        wait = _clock_wait(base, size, args[0].i32 & _U32, args[2].i32 & _U32, run.clock_origin_ns)
        if wait is not None:
            remaining = run.deadline - time.monotonic()
            if wait > remaining:
                if remaining > 0:
                    time.sleep(remaining)
                raise _Stop(Ending.TIMED_OUT)
    return run.forward(caller, b"poll_oneoff", args, nargs)


_ENTRY_COST = 4096
"""What creating a file, directory or link costs against the write budget (one block)."""

_O_CREAT = 1


def _fd_pwrite(run: _Run, caller: int, args: Any, nargs: int) -> int:
    return run.forward_write(
        caller,
        b"fd_pwrite",
        args,
        nargs,
        args[1].i32 & _U32,
        args[2].i32 & _U32,
        args[4].i32 & _U32,
    )


def _fd_allocate(run: _Run, caller: int, args: Any, nargs: int) -> int:
    return run.forward_charged(caller, b"fd_allocate", args, nargs, max(args[2].i64, 0))


def _path_open(run: _Run, caller: int, args: Any, nargs: int) -> int:
    if args[4].i32 & _O_CREAT:
        return run.forward_charged(caller, b"path_open", args, nargs, _ENTRY_COST)
    return run.forward(caller, b"path_open", args, nargs)


def _creating(name: bytes) -> Any:
    def create(run: _Run, caller: int, args: Any, nargs: int) -> int:
        return run.forward_charged(caller, name, args, nargs, _ENTRY_COST)

    return create


class _RawMemory:
    """The calling instance's ``memory``, for :mod:`wagi.outbound.abi` (one call)."""

    __slots__ = ("_caller", "_run")

    def __init__(self, run: _Run, caller: int) -> None:
        self._run = run
        self._caller = caller

    def _address(self, ptr: int, length: int) -> int:
        try:
            base, size = self._run.guest_memory(self._caller)
        except _Stop:
            raise GuestMemoryError(HttpError.MEMORY_NOT_FOUND) from None
        if ptr + length > size:
            raise GuestMemoryError(HttpError.MEMORY_ACCESS_ERROR)
        return base + ptr

    def read(self, ptr: int, length: int) -> bytes:
        address = self._address(ptr, length)
        return ctypes.string_at(address, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        address = self._address(ptr, len(data))
        if data:
            ctypes.memmove(address, data, len(data))


def _outbound(name: str, count: int) -> Any:
    """The host side of ``wasi_experimental_http.<name>``: the run's session does the work."""

    def call(run: _Run, caller: int, args: Any, nargs: int) -> int:
        values = [args[i].i32 for i in range(count)]
        return run.outbound_session().call(name, _RawMemory(run, caller), *values)

    return call


def _clock_wait(base: int, size: int, subs: int, nsubs: int, origin_ns: int) -> float | None:
    """Seconds a ``poll_oneoff`` call would block, if it only waits on clocks.

    Returns ``None`` when the call has an fd subscription (stdin and files are
    always ready, so WASI returns at once), an unknown clock, or bad pointers
    (WASI reports those itself).
    """
    if nsubs == 0 or nsubs > IOV_MAX or subs + 48 * nsubs > size:
        return None
    raw = ctypes.string_at(base + subs, 48 * nsubs)
    wait: float | None = None
    for offset in range(0, 48 * nsubs, 48):
        if raw[offset + 8] != 0:  # fd_read / fd_write subscription
            return None
        clock_id, timeout, _precision, flags = struct.unpack_from("<I4xQQH", raw, offset + 16)
        if flags & 1:  # subscription_clock_abstime
            if clock_id == 0:  # realtime
                now = time.time_ns()
            elif clock_id == 1:  # monotonic, counted from the WASI context's creation
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


def _host_functions() -> list[tuple[bytes, bytes, str, Any]]:
    """Every host function wagi defines over WASI's: (module, name, parameters, body)."""
    wasi = [
        ("fd_write", _fd_write),
        ("poll_oneoff", _poll_oneoff),
        ("fd_renumber", _fd_renumber),
        ("fd_close", _fd_close),
        ("fd_pwrite", _fd_pwrite),
        ("fd_allocate", _fd_allocate),
        ("path_open", _path_open),
        ("path_create_directory", _creating(b"path_create_directory")),
        ("path_symlink", _creating(b"path_symlink")),
        ("path_link", _creating(b"path_link")),
    ]
    functions = [(_WASI, name.encode(), _FORWARDED[name], body) for name, body in wasi]
    for name, count in SIGNATURES.items():
        functions.append(
            (
                IMPORT_MODULE.encode(),
                name.encode(),
                " ".join(["i32"] * count),
                _outbound(name, count),
            )
        )
    return functions


class _EpochTicker:
    """Advances one engine's epoch every ``tick`` seconds while timed runs happen.

    One thread per engine, started by the first run and ended after ``_TICKER_LINGER``
    seconds without one. A run only counts itself in and out under a lock: the ticker is
    never woken for it (waking a thread per request costs more than the request's Python),
    so it keeps ticking through the short gaps between runs, which costs nothing to a run.
    """

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine
        self._tick = tick
        self._lock = threading.Lock()
        self._active = 0
        self._last_run = 0.0
        self._thread: threading.Thread | None = None

    def start_run(self) -> None:
        with self._lock:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="wagi-wasmtime-epoch", daemon=True
                )
                self._thread.start()

    def end_run(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._last_run = time.monotonic()

    def _loop(self) -> None:
        next_tick = time.monotonic() + self._tick
        while True:
            remaining = next_tick - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            self._engine.increment_epoch()
            now = time.monotonic()
            # A late ticker skips ticks rather than bunching them: a deadline may come a
            # little late, never early.
            next_tick = max(next_tick, now) + self._tick
            with self._lock:
                if self._active == 0 and now - self._last_run > _TICKER_LINGER:
                    self._thread = None
                    return


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
        self._pre_ptr = ctypes.cast(instance_pre.ptr(), c_void_p).value if instance_pre else None
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
        streaming=True,
        thread_safe=True,
        outbound_http=True,
        write_budget=True,
        # wasmtime-wasi's file I/O runs on tokio's blocking pool (the C API does not ask
        # for blocking on the calling thread); tests/test_landlock.py measures it.
        shared_io_threads=True,
        components=True,
    )

    def __init__(
        self,
        cache: ArtifactCache | None = None,
        *,
        tick: float = _DEFAULT_TICK,
        pooling: bool = True,
    ) -> None:
        """Create the wasmtime engine. Call this in a worker, never in the gunicorn master."""
        self._cache = cache
        self._version = importlib.metadata.version("wasmtime")
        config = wasmtime.Config()
        config.epoch_interruption = True
        # wasmtime's own code cache stays off (its default): wagi keeps an artifact
        # cache of its own, in a directory the operator chose, shared by every worker.
        if pooling:
            _use_pooling_allocator(config)
        self._engine = wasmtime.Engine(config)
        self._engine_ptr = ctypes.cast(self._engine.ptr(), c_void_p).value
        self._ticker = _EpochTicker(self._engine, tick)
        self._local = threading.local()

        self._linker = wasmtime.Linker(self._engine)
        self._linker.allow_shadowing = True
        self._linker.define_wasi()
        i32 = wasmtime.ValType.i32()
        self._on_deadline = _deadline_callback(self._local)
        self._callbacks = []  # the Linker holds raw pointers to these: keep them alive
        for module_name, name, params, body in _host_functions():
            callback = _host_function(self._local, body)
            self._callbacks.append(callback)
            types = [wasmtime.ValType.i64() if p == "i64" else i32 for p in params.split()]
            functype = wasmtime.FuncType(types, [i32])
            error = lib.wasmtime_linker_define_func_unchecked(
                ctypes.cast(self._linker.ptr(), c_void_p),
                module_name,
                len(module_name),
                name,
                len(name),
                ctypes.cast(functype.ptr(), c_void_p),
                callback,
                None,
                capi.NO_FINALIZER,
            )
            if error:
                raise EngineError(
                    f"wasmtime: cannot define {name.decode()}: "
                    + capi.take_message(lib.wasmtime_error_message, error)
                )
        # WASI's own functions, for the forwarder.
        self._wasi_linker = wasmtime.Linker(self._engine)
        self._wasi_linker.define_wasi()
        self._wasi_linker_ptr = ctypes.cast(self._wasi_linker.ptr(), c_void_p).value
        self._forwarder_module: wasmtime.Module | None = None
        self._components = ComponentRunner(self)

    @property
    def version(self) -> str:
        return self._version

    # -- loading ---------------------------------------------------------------

    def load(self, path: Path) -> WasmtimeModule | ComponentModule:
        path = Path(path)
        wasm = read_module(path)
        digest = content_hash(wasm)
        if is_component(wasm):
            return self._components.load(path, wasm, digest)
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

    def _instantiate_forwarder(self, run: _Run, caller: int) -> dict[bytes, capi.Extern]:
        """Instantiate the forwarding module over the guest's memory in the run's store."""
        if self._forwarder_module is None:
            self._forwarder_module = wasmtime.Module(self._engine, _FORWARDER_WAT)
        run.guest_memory(caller)
        assert run.memory is not None
        names = [name.encode() for name in _FORWARDED]
        imports = (capi.Extern * (len(names) + 1))()
        for index, name in enumerate(names):
            if not lib.wasmtime_linker_get(
                self._wasi_linker_ptr,
                run.ctx,
                _WASI,
                len(_WASI),
                name,
                len(name),
                byref(imports[index]),
            ):
                raise _Stop(Ending.TRAPPED, f"wagi: WASI has no {name.decode()}")
        imports[len(names)] = run.memory
        instance = capi.Instance()
        trap = c_void_p()
        error = lib.wasmtime_instance_new(
            run.ctx,
            ctypes.cast(self._forwarder_module.ptr(), c_void_p),
            imports,
            len(imports),
            byref(instance),
            byref(trap),
        )
        if error or trap.value:
            raise _Stop(Ending.TRAPPED, "wagi: cannot instantiate the WASI forwarder")
        functions = {}
        for name in names:
            function = capi.Extern()
            lib.wasmtime_instance_export_get(
                run.ctx, byref(instance), name, len(name), byref(function)
            )
            functions[name] = function
        return functions

    # -- running ---------------------------------------------------------------

    def prepare(self, module: LoadedModule, limits: Limits) -> None:
        """Refuse at start-up a module that could never run: an import nothing provides, or
        memory that starts above ``limits.max_memory``.

        Only memories the module imports or exports are visible here; WASI modules
        export theirs. Any other one still fails at instantiation, per request.
        """
        if isinstance(module, ComponentModule) and module._owner is self:
            self._components.prepare(module, limits)
            return
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
        if isinstance(module, ComponentModule) and module._owner is self:
            return self._components.run(module, invocation)
        if not isinstance(module, WasmtimeModule) or module._owner is not self:
            raise EngineError(f"{module.path}: module was not loaded by this wasmtime engine")
        entrypoint = invocation.entrypoint
        if module._pre_ptr is None:
            raise EngineError(f"{module.path}: cannot instantiate: {module._link_error}")
        if entrypoint not in module.exports:
            raise EngineError(f"{module.path}: no exported function {entrypoint!r}")
        if entrypoint not in module._callable:
            raise EngineError(f"{module.path}: exported function {entrypoint!r} takes parameters")

        limits = invocation.limits
        store = lib.wasmtime_store_new(self._engine_ptr, None, capi.NO_FINALIZER)
        ctx = lib.wasmtime_store_context(store)
        timed = False
        try:
            clock_origin_ns = time.monotonic_ns()
            _configure_wasi(ctx, module.path, invocation)
            if limits.max_memory is not None:
                lib.wasmtime_store_limiter(store, limits.max_memory, -1, -1, -1, -1)
            deadline: float | None = None
            if limits.timeout is not None:
                deadline = time.monotonic() + limits.timeout
            if deadline is not None or invocation.stdout is not None:
                # Every tick: the deadline checked, the sink ticked (see _Run.on_tick).
                lib.wasmtime_store_epoch_deadline_callback(
                    store, self._on_deadline, None, capi.NO_FINALIZER
                )
                lib.wasmtime_context_set_epoch_deadline(ctx, 1)
                self._ticker.start_run()
                timed = True
            else:
                lib.wasmtime_context_set_epoch_deadline(ctx, _NO_DEADLINE)
            run = _Run(self, ctx, invocation, deadline, clock_origin_ns)
            self._local.run = run
            try:
                ending, exit_code, detail = self._call(run, module, entrypoint)
            finally:
                self._local.run = None
                if run.outbound is not None:
                    run.outbound.close_all()
        finally:
            if timed:
                self._ticker.end_run()
            lib.wasmtime_store_delete(store)
        stderr = bytes(run.stderr)
        if run.stderr_dropped:
            stderr += b"\n[wagi: %d more bytes of stderr dropped]\n" % run.stderr_dropped
        if run.outbound is not None:
            stderr += run.outbound.report()
        return RunResult(
            ending=ending,
            stdout=bytes(run.stdout),
            stderr=stderr,
            exit_code=exit_code,
            detail=detail,
            stdout_bytes=run.written,
        )

    def _call(self, run: _Run, module: WasmtimeModule, entrypoint: str) -> tuple[Ending, int, str]:
        """Instantiate and call; how it ended as (ending, exit code, detail)."""
        ctx = run.ctx
        instance = capi.Instance()
        trap = c_void_p()
        error = lib.wasmtime_instance_pre_instantiate(
            module._pre_ptr, ctx, byref(instance), byref(trap)
        )
        if error or trap.value:
            outcome = _outcome(run, error, trap.value)
            if outcome is None:  # neither exit nor trap: the module cannot be instantiated
                message = capi.take_message(lib.wasmtime_error_message, error)
                lib.wasmtime_error_delete(error)
                raise EngineError(f"{module.path}: cannot instantiate: {_one_line(message)}")
            return outcome
        names = [entrypoint]
        if entrypoint != "_start" and "_initialize" in module._callable:
            names.insert(0, "_initialize")
        function = capi.Extern()
        for name in names:
            encoded = name.encode()
            lib.wasmtime_instance_export_get(
                ctx, byref(instance), encoded, len(encoded), byref(function)
            )
            error = lib.wasmtime_func_call(
                ctx, byref(function.of.func), None, 0, None, 0, byref(trap)
            )
            if error or trap.value:
                outcome = _outcome(run, error, trap.value)
                if outcome is None:
                    message = capi.take_message(lib.wasmtime_error_message, error)
                    lib.wasmtime_error_delete(error)
                    outcome = (Ending.TRAPPED, 0, _one_line(message))
                if outcome[0] is not Ending.RETURNED:
                    return outcome
        if run.stopped is not None:  # stopped, but the guest returned before noticing
            return run.stopped, 0, run.detail
        return Ending.RETURNED, 0, ""


def _outcome(run: _Run, error: int | None, trap: int | None) -> tuple[Ending, int, str] | None:
    """An exit or a trap as (ending, exit code, detail); ``None`` for any other error.

    Takes ownership of ``trap``; leaves a non-exit ``error`` to the caller.
    """
    if error:
        code = c_int()
        if lib.wasmtime_error_exit_status(error, byref(code)):
            lib.wasmtime_error_delete(error)
            if run.stopped is not None:
                return run.stopped, 0, run.detail
            if code.value == 0:
                return Ending.RETURNED, 0, ""
            return Ending.EXITED, code.value, f"exit code {code.value}"
        if run.stopped is not None:
            lib.wasmtime_error_delete(error)
            return run.stopped, 0, run.detail
        return None
    assert trap
    try:
        if run.stopped is not None:  # a host function or the deadline callback stopped it
            return run.stopped, 0, run.detail
        return Ending.TRAPPED, 0, _one_line(capi.take_message(lib.wasm_trap_message, trap))
    finally:
        lib.wasm_trap_delete(trap)


def _configure_wasi(ctx: int, path: Path, invocation: Invocation) -> None:
    """argv, env (only the invocation's), stdin and preopens for one run."""
    _set_wasi(ctx, path, _wasi_config(path, invocation))


def _wasi_config(path: Path, invocation: Invocation) -> int:
    """A ``wasi_config_t`` with argv, env (only the invocation's), stdin and preopens."""
    wasi = lib.wasi_config_new()
    env = invocation.env
    try:
        argv_keep, argv_array, argc = _string_block(invocation.argv)
        names_keep, names_array, count = _names_block(tuple(env))
        values_keep, values_array, _ = _string_block(env.values())
    except ValueError as exc:
        _discard_wasi(wasi)
        raise EngineError(f"{path}: {exc}") from None
    lib.wasi_config_set_argv(wasi, argc, argv_array)
    lib.wasi_config_set_env(wasi, count, names_array, values_array)
    del argv_keep, names_keep, values_keep  # wasmtime copied them
    stdin = invocation.stdin
    if invocation.stdin_file is not None:
        if not lib.wasi_config_set_stdin_file(wasi, os.fsencode(invocation.stdin_file)):
            _discard_wasi(wasi)
            raise EngineError(f"{path}: cannot open the request body {invocation.stdin_file}")
    elif stdin:
        vec = capi.ByteVec()
        lib.wasm_byte_vec_new(byref(vec), len(stdin), stdin)  # wasmtime's own copy
        lib.wasi_config_set_stdin_bytes(wasi, byref(vec))  # takes the vector's contents
    for preopen in invocation.preopens:
        if not lib.wasi_config_preopen_dir(
            wasi,
            os.fsencode(preopen.host_path),
            preopen.guest_path.encode(),
            not preopen.read_only,
        ):
            _discard_wasi(wasi)
            raise EngineError(
                f"{path}: cannot open volume {preopen.host_path} (for {preopen.guest_path})"
            )
    return int(wasi)


def _set_wasi(ctx: int, path: Path, wasi: int) -> None:
    """Give the store its WASI context (for a core module's preview 1 and a component's 0.2)."""
    error = lib.wasmtime_context_set_wasi(ctx, wasi)  # takes ownership of the config
    if error:
        message = capi.take_message(lib.wasmtime_error_message, error)
        lib.wasmtime_error_delete(error)
        raise EngineError(f"{path}: invalid WASI state: {_one_line(message)}")


def _discard_wasi(wasi: int) -> None:
    lib.wasi_config_delete(wasi)


_PLUS_ONE = (1).__add__


def _bytes_data_offset() -> int | None:
    """Where a ``bytes`` object's data starts, from its ``id`` (CPython's layout; the
    same from 3.10 to 3.13). ``ctypes.cast`` finds the same address in about 0.8 µs, twice
    per run; ``None`` (use ctypes) if this interpreter lays bytes out otherwise."""
    probe = b"wagi probe"
    offset = (ctypes.cast(probe, c_void_p).value or 0) - id(probe)  # type: ignore[arg-type]
    again = b"another, longer probe"
    if (ctypes.cast(again, c_void_p).value or 0) - id(again) != offset:  # type: ignore[arg-type]
        return None
    return offset


_BYTES_DATA = _bytes_data_offset()


def _string_block(texts: Iterable[str]) -> tuple[object, int, int]:
    """A ``char **`` of ``texts`` for the WASI setters: ``(keep_alive, address, count)``.

    One encode of all the strings joined by NULs, and one array of addresses into it:
    about a third of encoding them one by one (a run's 25 CGI variables, twice).
    """
    items = list(texts)
    if not items:
        return None, 0, 0
    joined = "\0".join(items)
    try:
        blob = joined.encode() + b"\0"
    except UnicodeEncodeError:
        return *capi.string_array(_c_strings(items)), len(items)
    if blob.count(0) != len(items):  # one of them holds a NUL of its own
        _c_strings(items)  # raises, naming it
    if len(blob) == len(joined) + 1:  # one byte per character: lengths from the strings
        lengths: Iterable[int] = map(_PLUS_ONE, map(len, items))
    else:
        lengths = [len(item.encode()) + 1 for item in items]
    if _BYTES_DATA is not None:
        base = id(blob) + _BYTES_DATA
    else:
        base = ctypes.cast(blob, c_void_p).value or 0  # type: ignore[arg-type]
    addresses = array("Q", accumulate(lengths, initial=base))
    return (blob, addresses), addresses.buffer_info()[0], len(items)


_NAMES: dict[tuple[str, ...], tuple[object, int, int]] = {}
"""Encoded environment names, by the names in their order: a route's runs mostly pass the
same names (its variables and the CGI ones, the client's headers), and wasmtime copies the
strings, so one encoded block serves every run that has them."""

_NAMES_KEPT = 256


def _names_block(names: tuple[str, ...]) -> tuple[object, int, int]:
    block = _NAMES.get(names)
    if block is None:
        block = _string_block(names)
        if len(_NAMES) >= _NAMES_KEPT:
            _NAMES.clear()
        _NAMES[names] = block
    return block


def _c_strings(texts: Iterable[str]) -> list[bytes]:
    """UTF-8 for WASI strings. Lone surrogates (from undecodable request bytes) become
    U+FFFD rather than failing the request; a NUL cannot cross into a C string at all."""
    try:
        encoded = [text.encode() for text in texts]
    except UnicodeEncodeError:
        encoded = [
            text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode()
            for text in texts
        ]
    if b"\0" in b"".join(encoded):
        culprit = next(text for text in encoded if b"\0" in text)
        raise ValueError(f"a NUL byte cannot be passed to a module (in {culprit[:60]!r})")
    return encoded


def _use_pooling_allocator(config: wasmtime.Config) -> None:
    """Pre-reserve instance slots: a fresh instance then costs ~10 µs less."""
    pool = lib.wasmtime_pooling_allocation_config_new()
    try:
        for setter in ("total_core_instances", "total_memories", "total_tables", "total_stacks"):
            getattr(lib, f"wasmtime_pooling_allocation_config_{setter}_set")(pool, _POOL_SLOTS)
        lib.wasmtime_pooling_allocation_config_max_unused_warm_slots_set(pool, 16)
        configure_pooling(pool)
        lib.wasmtime_pooling_allocation_strategy_set(ctypes.cast(config.ptr(), c_void_p), pool)
    finally:
        lib.wasmtime_pooling_allocation_config_delete(pool)
