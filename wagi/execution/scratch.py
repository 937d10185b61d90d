"""A private scratch directory per request: the ``tmp`` key of ``modules.toml``.

Many real programs need a writable ``/tmp`` (compilers, synthesis tools,
interpreters). A route with ``tmp = true`` (or a guest path, or a table) gives
each request its own empty directory, preopened at the guest path, and removes it
when the request ends, whatever the ending::

    with provide(invocation, Scratch("/tmp", 64 << 20)) as invocation:
        result = engine.run(module, invocation)   # sees an empty, writable /tmp
    # the directory is gone

Where the directories live: ``$TMPDIR/wagi-scratch-<uid>/w<pid>/<random>``, one
folder per worker process (mode 0700, checked to be ours). A worker that was
killed (a wasmer timeout ends the worker) leaves its folder behind; every worker
removes the folders of processes that no longer exist when it starts
(:func:`clean_leftovers`).

What bounds them: the engine counts what a run writes to files (``Limits.max_write``,
the ``max_size`` of the ``tmp`` key): every byte written to a file, in the scratch
directory or in a volume, and 4 KiB for every file, directory or link created;
past it, writes fail with ``EDQUOT`` ("disk quota exceeded"). So one request holds
at most ``max_size`` bytes of data at a time and a worker at most one request's
(a sync worker serves one request at a time). Not bounded: the number of inodes
beyond that 4 KiB each, and the space the file system itself rounds up to; a
rewritten file counts every time it is written.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wagi.config import Scratch
from wagi.engines.base import Invocation, Preopen


class ScratchError(Exception):
    """The scratch area cannot be used (say, its folder belongs to someone else)."""


def area_root() -> Path:
    """``$TMPDIR/wagi-scratch-<uid>``: this user's scratch area on this machine."""
    return Path(tempfile.gettempdir()) / f"wagi-scratch-{os.getuid()}"


def _own_directory(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is a private folder of ours."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    info = os.lstat(path)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise ScratchError(
            f"{path} must be a directory owned by uid {os.getuid()} with mode 0700 "
            "(it holds the scratch directories of requests)"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(root: Path | None = None) -> list[Path]:
    """Remove the folders of worker processes that no longer exist; return them.

    A folder named after this process is a leftover too (a previous process with
    the same pid). Folders of live processes are left alone.
    """
    root = area_root() if root is None else root
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    me = os.getpid()
    for entry in entries:
        name = entry.name
        if not (name.startswith("w") and name[1:].isdigit()):
            continue
        pid = int(name[1:])
        if pid == me or not _alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


_worker: tuple[int, Path] | None = None


def worker_folder() -> Path:
    """This process's folder of transient files, made (after cleaning leftovers) once.

    It holds the scratch directories and the spooled request bodies
    (:func:`wagi.server.body.read_body`): the one host folder, besides volumes, that the
    kernel wall (:mod:`wagi.execution.wall`) lets the threads that run modules reach.
    """
    global _worker
    pid = os.getpid()
    if _worker is None or _worker[0] != pid:
        root = area_root()
        _own_directory(root)
        clean_leftovers(root)
        folder = root / f"w{pid}"
        _own_directory(folder)
        _worker = (pid, folder)
        # A worker that exits normally takes its folder along; a killed one leaves it
        # to the next worker's clean_leftovers.
        atexit.register(_remove_own_folder, pid, folder)
    return _worker[1]


def folder_problem(folder: Path | str) -> str:
    """Why ``folder`` (a :func:`worker_folder`) can no longer serve, or ``""``: one stat."""
    if os.path.isdir(folder):
        return ""
    return f"its folder of transient files ({folder}) was removed"


def _remove_own_folder(pid: int, folder: Path) -> None:
    if os.getpid() == pid:  # not in a forked child
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def provide(invocation: Invocation, scratch: Scratch | None) -> Iterator[Invocation]:
    """``invocation`` with a fresh, empty scratch directory, removed on the way out.

    Without ``scratch`` the invocation is returned as it is. The directory is
    removed whatever happens inside the block (return, exception); only the end of
    the process itself can leave it, for :func:`clean_leftovers`.
    """
    if scratch is None:
        yield invocation
        return
    directory = Path(tempfile.mkdtemp(dir=worker_folder()))
    try:
        yield dataclasses.replace(
            invocation,
            preopens=(*invocation.preopens, Preopen(scratch.guest_path, directory)),
            limits=dataclasses.replace(invocation.limits, max_write=scratch.max_size),
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
