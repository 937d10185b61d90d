"""What a wasmer run gets from the host beyond wasmer's own WASI: outbound HTTP and a fd
table that places volumes at fd 3 and follows a module that renumbers its stdout.

wasmer-python host functions get no caller, so both bind to the run in hand (the engine
runs one module at a time): :class:`HttpBinding` to the run's
:class:`~wagi.outbound.abi.OutboundSession`, :class:`FdTable` to the run's instance.
"""

from __future__ import annotations

import struct
from typing import Any

from wagi.engines.base import EngineError
from wagi.engines.wasmer.captures import write_all
from wagi.outbound.abi import SIGNATURES, GuestMemoryError, HttpError, OutboundSession
from wagi.outbound.policy import DENY_ALL

OUTBOUND_MARGIN = 0.1
"""Seconds before the run's deadline at which outbound HTTP gives up on wasmer.

wasmer cannot interrupt a guest, so past the deadline the watchdog ends the worker.
A request cut short a little earlier lets the host function trap the guest, the run
end as timed out (504) and the worker live on."""

FD_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_renumber" (func $renumber (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $write (param i32 i32 i32 i32) (result i32)))
  ;; The guest's own memory: WASI functions find their memory through the "memory"
  ;; export of the instance that imports them.
  (import "wagi" "memory" (memory 0))
  (export "memory" (memory 0))
  (func (export "fd_renumber") (param i32 i32) (result i32)
    (call $renumber (local.get 0) (local.get 1)))
  (func (export "fd_close") (param i32) (result i32) (call $close (local.get 0)))
  (func (export "fd_write") (param i32 i32 i32 i32) (result i32)
    (call $write (local.get 0) (local.get 1) (local.get 2) (local.get 3))))
"""
"""The run's own WASI ``fd_renumber``, ``fd_close`` and ``fd_write``, callable from Python."""

FD_SHADOWED = ("fd_renumber", "fd_close", "fd_write")
"""The WASI functions wagi replaces for a module that renumbers its fds."""

PARKED_FD = 0x3FFF_FFFF
"""Where the virtual ``/`` waits while the volumes move down to fd 3 (never a real fd)."""

IOV_MAX = 1024
"""Buffers one ``fd_write`` may hand over (POSIX ``writev``'s limit, as on wasmtime)."""

_ERRNO_BADF, _ERRNO_INVAL, _ERRNO_IO, _ERRNO_FAULT = 8, 28, 29, 21


class DeadlinePassed(Exception):
    """Raised from a host function to trap the guest: its deadline has passed."""


class WasmerMemory:
    """The instance's ``memory`` export, for :mod:`wagi.outbound.abi` (one call)."""

    __slots__ = ("_view",)

    def __init__(self, instance: Any) -> None:
        try:
            memory = instance.exports.memory
            self._view: memoryview | None = memoryview(memory.buffer)
        except Exception:  # no such export, or not a memory
            self._view = None

    def _check(self, ptr: int, length: int) -> memoryview:
        if self._view is None:
            raise GuestMemoryError(HttpError.MEMORY_NOT_FOUND)
        if ptr + length > len(self._view):
            raise GuestMemoryError(HttpError.MEMORY_ACCESS_ERROR)
        return self._view

    def read(self, ptr: int, length: int) -> bytes:
        return bytes(self._check(ptr, length)[ptr : ptr + length])

    def write(self, ptr: int, data: bytes) -> None:
        self._check(ptr, len(data))[ptr : ptr + len(data)] = data


class HttpBinding:
    """The engine's ``wasi_experimental_http`` functions, bound to the current run's session.

    wasmer-python host functions get no caller: the memory is found through the
    instance, known once it exists (before the guest can call anything). The engine
    runs one module at a time, so one binding serves every run.
    """

    def __init__(self) -> None:
        self.session = OutboundSession(DENY_ALL, None)
        self.instance: Any = None

    def start(self, session: OutboundSession) -> None:
        self.session = session
        self.instance = None

    def end(self) -> None:
        self.session.close_all()
        self.instance = None

    def functions(self, wasmer: Any, store: Any) -> dict[str, Any]:
        i32 = wasmer.Type.I32
        return {
            name: wasmer.Function(store, self._host(name), wasmer.FunctionType([i32] * n, [i32]))
            for name, n in SIGNATURES.items()
        }

    def _host(self, name: str) -> Any:
        def host(*args: int) -> int:
            session = self.session
            code = session.call(name, WasmerMemory(self.instance), *args)
            if session.timed_out:
                # The guest cannot be interrupted; trapping it now ends the run before
                # the watchdog has to end the worker.
                raise DeadlinePassed("wagi: outbound HTTP reached the module's deadline")
            return code

        return host


class FdTable:
    """The run's fd table where wasmer's own falls short, for one run at a time.

    - Volumes at fd 3 on (:meth:`move_volumes`), as on wasmtime and every other runtime.
    - stdout and stderr as the module's own fd table says, for a module that renumbers
      fds: ``streams`` maps a guest fd to the process fd it writes to (1 or 2, the run's
      captures). A write to a stream still at its own number goes to wasmer's
      ``fd_write`` (as for every module); a stream moved elsewhere is written here.

    The host functions are made once per Store (:meth:`functions`) and act on the run
    :meth:`attach` names; the engine runs one module at a time.
    """

    def __init__(self) -> None:
        self.streams: dict[int, int] = {1: 1, 2: 2}
        self.vacant: set[int] = set()
        """fd 1 or 2 once moved or closed (and nothing renumbered onto it)."""
        self.real: Any = None
        """An ImportObject with the run's own WASI functions under ``wasi_snapshot_preview1``
        (the guest's own, where wagi replaces none of them), for :data:`FD_WAT`."""
        self._calls: Any = None
        self._memory: Any = None

    def attach(self, wasmer: Any, instance: Any, fd_module: Any) -> None:
        """Bind the run whose guest is ``instance`` (before any of its code runs)."""
        self.streams = {1: 1, 2: 2}
        self.vacant = set()
        self._memory = instance.exports.memory
        self.real.register("wagi", {"memory": self._memory})
        self._calls = wasmer.Instance(fd_module, self.real).exports

    def end(self) -> None:
        self._calls = self._memory = self.real = None

    def move_volumes(self, count: int) -> None:
        """wasmer's virtual ``/`` at fd 3 and ``count`` volumes from fd 4 -> the volumes
        from fd 3 (in the configuration's order), the virtual ``/`` right after them."""
        if not count:
            return
        renumber = self._calls.fd_renumber
        moves = [(3, PARKED_FD), *((4 + i, 3 + i) for i in range(count)), (PARKED_FD, 3 + count)]
        for source, target in moves:
            errno = renumber(source, target)
            if errno:
                raise EngineError(f"cannot place the volumes at fd 3 (fd_renumber: errno {errno})")

    def functions(self, wasmer: Any, store: Any) -> dict[str, Any]:
        i32 = wasmer.Type.I32

        def fd_renumber(source: int, target: int) -> int:
            errno = int(self._calls.fd_renumber(source, target))
            if errno == 0:
                stream = self.streams.pop(source, None)
                self.streams.pop(target, None)
                if stream is not None:
                    self.streams[target] = stream
                self.vacant.discard(target)
                if source in (1, 2):
                    self.vacant.add(source)
            return errno

        def fd_close(fd: int) -> int:
            errno = int(self._calls.fd_close(fd))
            if errno == 0:
                self.streams.pop(fd, None)
                if fd in (1, 2):
                    self.vacant.add(fd)
            return errno

        def fd_write(fd: int, iovs: int, count: int, nwritten: int) -> int:
            if fd in self.vacant:
                return _ERRNO_BADF  # wasmer would still write fds 1 and 2 to stdio by number
            stream = self.streams.get(fd)
            if stream is None or stream == fd:
                return int(self._calls.fd_write(fd, iovs, count, nwritten))
            return self._write(stream, iovs, count, nwritten)

        def function(python: Any, params: int) -> Any:
            return wasmer.Function(store, python, wasmer.FunctionType([i32] * params, [i32]))

        return {
            "fd_renumber": function(fd_renumber, 2),
            "fd_close": function(fd_close, 1),
            "fd_write": function(fd_write, 4),
        }

    def _write(self, stream: int, iovs: int, count: int, nwritten: int) -> int:
        """Every buffer of one ``fd_write`` into the process fd ``stream`` (a capture)."""
        if count > IOV_MAX:
            return _ERRNO_INVAL
        memory = memoryview(self._memory.buffer)
        size = len(memory)
        if iovs + 8 * count > size or nwritten + 4 > size:
            return _ERRNO_FAULT
        total = 0
        for i in range(count):
            base, length = struct.unpack_from("<II", memory, iovs + 8 * i)
            if base + length > size:
                return _ERRNO_FAULT
            try:
                write_all(stream, memory[base : base + length])
            except OSError:  # the capture is full: the engine reports the output limit
                return _ERRNO_IO
            total += length
        struct.pack_into("<I", memory, nwritten, total)
        return 0
