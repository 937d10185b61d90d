"""wagi's host functions over WASI's, for core modules on the wasmtime engine.

wagi shadows a few WASI functions (:data:`_FORWARDED`): ``fd_write`` to deliver every
buffer of a vectored write to the run's sink, ``fd_renumber`` and ``fd_close`` to follow
the module's own fd table of stdout and stderr, ``poll_oneoff`` to stop a sleep at the
deadline, and the functions that write files to charge the write budget; and it binds
the ``wasi_experimental_http`` functions (:mod:`wagi.outbound.abi`). Each is a raw C
callback (:func:`_host_function`) that finds the run in hand in a thread-local and never
lets an exception out. A shadow calls WASI's own function through a generated forwarding
module (:data:`_FORWARDER_WAT`). :mod:`.engine`'s docstring says why.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from typing import Any

from wagi.engines.base import Ending
from wagi.engines.wasmtime import capi
from wagi.engines.wasmtime.run import _U32, IOV_MAX, _Run, _Stop
from wagi.outbound.abi import (
    IMPORT_MODULE,
    SIGNATURES,
    GuestMemoryError,
    HttpError,
)

lib = capi.lib

_WASI = b"wasi_snapshot_preview1"

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
"""Calls WASI on behalf of a host function (see :mod:`.engine`'s docstring)."""


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
