"""The kernel wall: Linux Landlock confines one thread to the paths it is given.

The WebAssembly sandbox is the first wall around a module; this is the second,
below it. A thread that calls :func:`restrict_current_thread` can from then on
reach, on the host file system, only the paths of its rules, each read-only or
read-write, whatever the code running in that thread does (an engine's WASI
layer included). The kernel resolves ``..`` and symlinks itself, so a path that
leaves an allowed directory that way is refused like any other. This module
knows nothing of HTTP or of any engine: the caller says which paths to grant.

Facts to design around:

- Confinement applies to the **calling thread** and to the threads it creates
  afterwards. Other threads of the process are not affected. Never call it on
  a thread that must keep its access (the main thread of a worker, pytest's).
- It **cannot be undone**. A second call stacks a second ruleset on the first;
  access is then what *both* allow.
- Files and directories opened before confinement stay usable (a descriptor
  is not re-checked), so open what the thread needs first, then confine it.
  ``stat`` is not restricted; opening, listing, creating, removing,
  truncating, renaming and executing are.
- Python imports modules lazily from files: a module first imported after
  confinement fails with ``PermissionError``. Import everything the thread
  will use first.
- ``PR_SET_NO_NEW_PRIVS`` is set on the thread first (the kernel requires it
  for an unprivileged thread). It is per thread too, and also irrevocable.

What the wall refuses depends on the kernel's Landlock ABI: everything the
running kernel can control is handled, so nothing it can refuse is left open
(file access from ABI 1, cross-directory rename and link from ABI 2,
truncation from ABI 3, device ioctls from ABI 5; TCP bind and connect from
ABI 4; abstract unix sockets and signals to processes outside the thread's
domain from ABI 6). :attr:`Availability.gaps` names what an older kernel
cannot refuse.

The syscalls are made through `landlockpy <https://pypi.org/project/landlockpy/>`_,
a small, typed, dependency-free binding that covers Landlock ABI 1 to 11
(per-path access masks, network rules, scopes) and confines only the calling
thread unless asked otherwise.

Example::

    ok, abi, why = availability()
    report = restrict_current_thread(
        [PathRule(Path("/srv/data"), writable=True), PathRule(Path("/srv/static"))],
        deny_network=True,
    )
    print(report.describe())
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import landlockpy
from landlockpy import AccessFS, AccessNet, Ruleset

__all__ = [
    "Availability",
    "PathRule",
    "Report",
    "WallError",
    "availability",
    "describe",
    "restrict_current_thread",
]


class WallError(Exception):
    """The thread could not be confined as asked; the message says why.

    Raised before anything was enforced, so the thread is not confined.
    """


@dataclass(frozen=True)
class PathRule:
    """Access to a file or a directory tree: read-only, or read-write when ``writable``.

    Read-only allows opening files for reading and listing directories. Read-write
    also allows writing, truncating, creating and removing files, directories and
    symlinks, and renaming within the granted trees. Nothing allows executing a file
    or creating devices, fifos or sockets.
    """

    path: Path
    writable: bool = False


class Availability(NamedTuple):
    """Whether Landlock can confine threads here, the kernel's ABI, and if not, why."""

    ok: bool
    abi: int
    why: str

    @property
    def gaps(self) -> tuple[str, ...]:
        """What this kernel's Landlock cannot refuse (nothing from ABI 6 on)."""
        return _gaps(self.abi, deny_network=True) if self.ok else ()


def _gaps(abi: int, *, deny_network: bool) -> tuple[str, ...]:
    gaps = []
    if abi < 3:
        gaps.append("truncating a file in a read-only path (needs Landlock ABI 3, Linux 6.2)")
    if abi < 4 and deny_network:
        gaps.append("TCP bind and connect (needs Landlock ABI 4, Linux 6.7)")
    if abi < 6:
        gaps.append(
            "abstract unix sockets and signals to other processes "
            "(needs Landlock ABI 6, Linux 6.12)"
        )
    return tuple(gaps)


def availability() -> Availability:
    """Ask the kernel (``landlock_create_ruleset(NULL, 0, VERSION)``) which ABI it offers.

    Cheap (one syscall) and without side effects; safe in any process or thread.
    """
    if sys.platform != "linux":
        return Availability(False, 0, f"Landlock is a Linux feature (this is {sys.platform})")
    try:
        abi = landlockpy.abi_version()
    except OSError as exc:
        return Availability(False, 0, f"Landlock failed to answer: {os.strerror(exc.errno or 0)}")
    if abi < 1:
        return Availability(
            False,
            0,
            f"this kernel ({os.uname().release}) has no Landlock: it needs Linux 5.13+ "
            "built with CONFIG_SECURITY_LANDLOCK and 'landlock' in its lsm= list",
        )
    return Availability(True, abi, "")


@dataclass(frozen=True)
class Report:
    """What :func:`restrict_current_thread` enforced on the calling thread."""

    abi: int
    rules: tuple[PathRule, ...]
    network_denied: bool
    """TCP bind and connect are refused (ABI 4+, when asked)."""
    scoped: bool
    """Abstract unix sockets and signals cannot reach outside the thread's domain (ABI 6+)."""
    gaps: tuple[str, ...]
    seconds: float
    """How long confining took (creating the ruleset, adding the rules, enforcing it)."""

    def describe(self) -> str:
        """One line for a log: what the confined thread may still reach."""
        return _describe(self.abi, self.rules, self.network_denied, self.scoped, self.gaps)


def describe(
    rules: Iterable[PathRule], *, deny_network: bool, available: Availability | None = None
) -> str:
    """What :func:`restrict_current_thread` would grant here, for ``wagi check`` and logs."""
    available = available or availability()
    if not available.ok:
        return f"no kernel wall: {available.why}"
    return _describe(
        available.abi,
        tuple(rules),
        deny_network and available.abi >= 4,
        available.abi >= 6,
        _gaps(available.abi, deny_network=deny_network),
    )


def _describe(
    abi: int,
    rules: tuple[PathRule, ...],
    network_denied: bool,
    scoped: bool,
    gaps: tuple[str, ...],
) -> str:
    granted = [f"{'read-write' if r.writable else 'read-only'} {r.path}" for r in rules]
    parts = [
        f"Landlock ABI {abi}: the thread may reach "
        + (", ".join(granted) if granted else "no path")
        + "; nothing else on the file system"
    ]
    if network_denied:
        parts.append("no TCP bind or connect")
    if scoped:
        parts.append("no abstract unix sockets or signals outside its domain")
    if gaps:
        parts.append("this kernel cannot refuse " + ", ".join(gaps))
    return "; ".join(parts)


def restrict_current_thread(rules: Iterable[PathRule], *, deny_network: bool) -> Report:
    """Confine the calling thread (and threads it creates later) to ``rules``, for good.

    Everything the kernel's Landlock can control is denied except what the rules
    grant; with ``deny_network`` TCP bind and connect are denied too (ABI 4+).
    Abstract unix sockets and signals are scoped to the thread's domain (ABI 6+).

    Raises :class:`WallError`, without confining anything, when Landlock is not
    available or a rule's path cannot be opened (if the last step, enforcing, fails,
    the thread may already have ``no_new_privs`` set, which confines nothing).
    """
    started = time.perf_counter()
    available = availability()
    if not available.ok:
        raise WallError(available.why)
    abi = available.abi
    rules = tuple(rules)
    handled_fs = landlockpy.fs_for_abi(abi)
    handled_net = landlockpy.net_for_abi(abi) if deny_network else AccessNet.NONE
    scoped = landlockpy.scope_for_abi(abi)
    try:
        ruleset = Ruleset(
            handled_fs=handled_fs, handled_net=handled_net, scoped=scoped, best_effort=False
        )
    except OSError as exc:
        reason = os.strerror(exc.errno or 0)
        raise WallError(f"cannot create a Landlock ruleset: {reason}") from None
    with ruleset:
        for rule in rules:
            try:
                is_dir = stat.S_ISDIR(os.stat(rule.path).st_mode)
                ruleset.allow_path(rule.path, _access(rule.writable, is_dir))
            except OSError as exc:
                raise WallError(f"{rule.path}: cannot grant access: {exc.strerror}") from None
        try:
            ruleset.restrict()
        except OSError as exc:
            raise WallError(f"cannot confine the thread: {os.strerror(exc.errno or 0)}") from None
    return Report(
        abi=abi,
        rules=rules,
        network_denied=bool(handled_net),
        scoped=bool(scoped),
        gaps=_gaps(abi, deny_network=deny_network),
        seconds=time.perf_counter() - started,
    )


def _access(writable: bool, is_dir: bool) -> AccessFS:
    read = AccessFS.READ_FILE
    write = AccessFS.WRITE_FILE | AccessFS.TRUNCATE
    if not is_dir:  # Landlock accepts only file rights on a file
        return read | write if writable else read
    read |= AccessFS.READ_DIR
    if not writable:
        return read
    return (
        read
        | write
        | AccessFS.REMOVE_DIR
        | AccessFS.REMOVE_FILE
        | AccessFS.MAKE_DIR
        | AccessFS.MAKE_REG
        | AccessFS.MAKE_SYM
        | AccessFS.REFER
    )
