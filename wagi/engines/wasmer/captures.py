"""The stdio captures of a wasmer run: memfds that cannot grow far past their limit.

wasmer-python has no stdio capture API, so a run points the process's fds 0, 1 and 2 at
these for the duration of one call (:mod:`wagi.engines.wasmer.engine` says why memfds and
never pipes), and reads them back afterwards.
"""

from __future__ import annotations

import fcntl
import os

SEAL_SLACK = 4 << 20
"""Room past a byte limit before writes start failing.

A capture file is sized to ``limit + SEAL_SLACK`` and sealed against growth,
so a runaway writer cannot fill the host's memory. The kernel refuses a
write per page (or large folio) chunk that would cross the size, so the
limit is only detected reliably if the slack exceeds the largest chunk (2 MiB
for a PMD-sized folio): any attempt to write past ``limit`` then either
succeeds (the file offset passes ``limit``) or fails at an offset already
past it. The file is sparse, so the slack costs nothing unless written.
"""


SCRUB_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 32) "\\n")
  ;; Drain Rust's stdin buffer (fd 0 is at EOF on the host side), then push
  ;; one newline through stdout so a LineWriter holding stale bytes flushes
  ;; them. Returns the number of stale stdin bytes found.
  (func (export "scrub") (result i32)
    (local $total i32) (local $rounds i32)
    (block $done
      (loop $more
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 64512))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (local.set $total (i32.add (local.get $total) (i32.load (i32.const 8))))
        (local.set $rounds (i32.add (local.get $rounds) (i32.const 1)))
        (br_if $more (i32.lt_u (local.get $rounds) (i32.const 1024)))))
    (i32.store (i32.const 16) (i32.const 32))
    (i32.store (i32.const 20) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (local.get $total)))
"""


def memfd(name: str, limit: int | None) -> int:
    """A capture file; with a ``limit``, sealed so it cannot grow far past it."""
    fd = os.memfd_create(f"wagi-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    if limit is not None:
        try:
            os.ftruncate(fd, limit + SEAL_SLACK)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW)
        except BaseException:
            os.close(fd)
            raise
    return fd


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_prefix(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of ``fd`` (the guest cannot seek its stdio, so offset = size)."""
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def ensure_std_fds() -> None:
    """Open /dev/null on any of fds 0-2 that is closed.

    A run saves and restores fds 0-2; were one closed, a capture memfd would
    be given its number and the restore would go wrong.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
