"""One run of a core module on the wasmtime engine: what its host functions need.

:class:`_Run` is the per-run state the host functions (:mod:`.shims`), the epoch-deadline
callback and the stdout of a component (:mod:`.component`) work on: the run's sink and
output limit, its capped stderr, its deadline, the module's fd table of stdout and
stderr, the write budget, and its outbound HTTP session. A host function ends a run by
raising :class:`_Stop`; :func:`_outcome` says how a run ended. The engine keeps the run
in hand in a thread-local (:mod:`.engine`'s docstring says how the pieces fit).
"""

from __future__ import annotations

import ctypes
import time
from array import array
from ctypes import byref, c_int, c_void_p
from typing import TYPE_CHECKING, Any

from wagi.engines.base import (
    STDERR_LIMIT,
    Ending,
    Invocation,
    OutputGone,
    OutputTimedOut,
    RunResult,
    stderr_with_cap_note,
)
from wagi.engines.wasmtime import capi
from wagi.outbound.abi import OutboundSession
from wagi.outbound.policy import DENY_ALL

if TYPE_CHECKING:
    from wagi.engines.wasmtime.engine import WasmtimeEngine

lib = capi.lib

# WASI errno values (wasi_snapshot_preview1).
_EDQUOT = 19
_EFAULT = 21
_EINVAL = 28

_U32 = 0xFFFFFFFF

IOV_MAX = 1024
"""Buffers one ``fd_write`` may pass (POSIX's ``IOV_MAX``); more is EINVAL. It bounds
the host's work per call: a module cannot make one call walk millions of buffers."""

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
                self.keep_stderr(base + pairs[i], pairs[i + 1])
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

    def keep_stderr(self, address: int, length: int) -> None:
        """Keep ``length`` stderr bytes at ``address`` within :data:`STDERR_LIMIT`; count
        the rest as dropped."""
        keep = max(0, min(length, STDERR_LIMIT - len(self.stderr)))
        if keep:
            self.stderr += ctypes.string_at(address, keep)
        self.stderr_dropped += length - keep

    def result(self, ending: Ending, exit_code: int, detail: str) -> RunResult:
        """What the run gave, once it ended: its stdout (what the sink did not take), its
        stderr with the cap's note and the outbound HTTP report."""
        stderr = stderr_with_cap_note(bytes(self.stderr), self.stderr_dropped)
        if self.outbound is not None:
            stderr += self.outbound.report()
        return RunResult(
            ending=ending,
            stdout=bytes(self.stdout),
            stderr=stderr,
            exit_code=exit_code,
            detail=detail,
            stdout_bytes=self.written,
        )

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


def _outcome(run: _Run, error: int | None, trap: int | None) -> tuple[Ending, int, str] | None:
    """An exit or a trap as (ending, exit code, detail); ``None`` for any other error.

    Takes ownership of ``trap``; leaves a non-exit ``error`` to the caller (a component
    reports its traps as errors, so for it that ``None`` may be a trap).
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
