"""The narrow interface between wagi and a WebAssembly engine.

An engine knows how to compile a WASI module and run one of its exports with
a given argv, environment, stdin and set of preopened directories. It knows
nothing about HTTP: the CGI layer turns a request into an :class:`Invocation`
and turns the :class:`RunResult` back into a response.

Example::

    engine = WasmtimeEngine(cache=ArtifactCache(cache_dir))
    module = engine.load(Path("hello.wasm"))
    result = engine.run(module, Invocation(entrypoint="_start", argv=["/hello"]))
    assert result.ending is Ending.RETURNED
"""

from __future__ import annotations

import abc
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from wagi.engines.cache import ArtifactCache
    from wagi.outbound.policy import OutboundPolicy

STDERR_LIMIT = 1 << 20
"""Bytes of a run's stderr kept for the log, on every engine: a hostile module must not
fill the worker's memory through stderr. The rest is dropped, with a note saying so
(:func:`stderr_with_cap_note`)."""


def stderr_with_cap_note(kept: bytes, dropped: int) -> bytes:
    """A run's stderr for the log: the ``kept`` bytes and, when the cap dropped some, a
    note of how many, the same on every engine.

    >>> stderr_with_cap_note(b"oops\\n", 0)
    b'oops\\n'
    >>> stderr_with_cap_note(b"x" * 3, 5)
    b'xxx\\n[wagi: 5 more bytes of stderr dropped]\\n'
    """
    if not dropped:
        return kept
    return kept + b"\n[wagi: %d more bytes of stderr dropped]\n" % dropped


class OutputGone(Exception):
    """Raised by a :class:`StdoutSink` when its bytes can no longer be delivered (the reader
    went away): the run ends as :attr:`Ending.CANCELLED`."""


class OutputTimedOut(Exception):
    """Raised by a :class:`StdoutSink` that waited for its reader until the run's deadline:
    the run ends as :attr:`Ending.TIMED_OUT`."""


class StdoutSink(abc.ABC):
    """Where a run's stdout goes while the module writes it, on the thread that runs it.

    The engine hands over every byte the module writes to stdout, in order, within
    ``Limits.max_output``; the sink may hold bytes back, pass them on, wait for its reader
    (raising :class:`OutputTimedOut` at the deadline) or give up (:class:`OutputGone`).
    Nothing here knows what the bytes mean.
    """

    @abc.abstractmethod
    def write(self, data: memoryview) -> None:
        """The module wrote ``data`` (valid only during this call: copy what you keep)."""

    def tick(self) -> None:  # noqa: B027
        """Called now and then while the module computes (about every engine tick), so
        held bytes can go out on time; may raise like :meth:`write`."""


class EngineError(Exception):
    """A module could not be compiled, loaded or instantiated."""


class EngineBroken(EngineError):
    """The engine can run nothing more (see :attr:`Engine.broken`); its process should go."""


@dataclass(frozen=True)
class Preopen:
    """A host directory the module sees at ``guest_path`` (a WASI preopen)."""

    guest_path: str
    host_path: Path
    read_only: bool = False


@dataclass(frozen=True)
class Limits:
    """What one run may consume. ``None`` means unlimited."""

    timeout: float | None = None
    """Wall-clock seconds before the run is stopped."""
    max_memory: int | None = None
    """Bytes of linear memory the instance may grow to."""
    max_output: int | None = None
    """Bytes the module may write to stdout."""
    max_write: int | None = None
    """Bytes the module may write to files (fds other than 1 and 2), each file, directory or
    link it creates counting 4 KiB; past it, writes fail with ``EDQUOT``."""

    def deadline(self, margin: float = 0.0) -> float | None:
        """The ``time.monotonic()`` value at which a run starting now times out, ``margin``
        seconds early (what must end before the run does); ``None`` without a timeout."""
        if self.timeout is None:
            return None
        return time.monotonic() + max(self.timeout - margin, 0.0)


@dataclass(frozen=True)
class Invocation:
    """Everything one run of a module gets: nothing of the host leaks in."""

    entrypoint: str = "_start"
    argv: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    stdin_file: str | None = None
    """A file whose contents are stdin instead of ``stdin`` (a large body spooled to disk,
    so it is never held whole in memory); a path the engine may open."""
    preopens: Sequence[Preopen] = ()
    limits: Limits = Limits()
    stdout: StdoutSink | None = None
    """Where stdout goes as the module writes it; ``None`` keeps all of it in
    :attr:`RunResult.stdout`. Engines without :attr:`Capabilities.streaming` ignore it
    (the caller then finds the output in the result)."""
    outbound: OutboundPolicy | None = None
    """Outbound HTTP (``wasi_experimental_http``) for this run; ``None`` denies every request."""


class Ending(enum.Enum):
    """How a run ended."""

    RETURNED = "returned"
    """The export returned, or the module called ``proc_exit(0)``."""
    EXITED = "exited"
    """The module called ``proc_exit`` with a non-zero code."""
    TRAPPED = "trapped"
    """A trap: unreachable, out-of-bounds access, stack overflow, ..."""
    TIMED_OUT = "timed out"
    """The run passed ``Limits.timeout`` and was interrupted."""
    OUTPUT_TOO_LARGE = "output too large"
    """The module wrote more than ``Limits.max_output`` bytes to stdout."""
    CANCELLED = "cancelled"
    """Its stdout could no longer be delivered (the sink's reader went away)."""


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run: the bytes written to stdout/stderr and how it ended."""

    ending: Ending
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    detail: str = ""
    """Engine-specific description (a trap message), for the log only."""
    stdout_bytes: int = 0
    """Bytes the module wrote to stdout, wherever they went."""

    @property
    def succeeded(self) -> bool:
        return self.ending is Ending.RETURNED


@dataclass(frozen=True)
class Capabilities:
    """What an engine can enforce. Settings it cannot honour are refused at start-up."""

    volumes: bool
    """Preopened directories that confine the module (no escape through ``..`` or symlinks)."""
    read_only_volumes: bool
    memory_limit: bool
    interruptible: bool
    """A running module can be stopped at its timeout without ending the process."""
    thread_safe: bool = True
    """The engine may be used from any thread, and from several at once. An engine that is
    not may only be used on the thread that created it (wasmer-python's objects)."""
    streaming: bool = False
    """stdout reaches ``Invocation.stdout`` while the module runs (not only at its end)."""
    outbound_http: bool = False
    """Binds the ``wasi_experimental_http`` host functions (:mod:`wagi.outbound.abi`)."""
    write_budget: bool = False
    """Enforces ``Limits.max_write`` (what bounds a scratch directory,
    :mod:`wagi.execution.scratch`)."""
    shared_io_threads: bool = False
    """Its WASI file I/O runs on process-wide helper threads, made by whichever thread first
    needed one and reused by every thread after it. Such threads carry their creator's
    kernel confinement (:mod:`wagi.execution.landlock`), not their caller's."""
    components: bool = False
    """Runs WASI 0.2 command components (``wasi:cli/run``) as well as core modules."""


class LoadedModule(abc.ABC):
    """A compiled module, ready to be instantiated many times."""

    path: Path
    exports: frozenset[str]
    """Names of the exported functions (a component: ``_start``, its one way in)."""
    entrypoints: frozenset[str]
    """The exports a run can call: functions that take no parameters."""
    kind: ClassVar[str] = "module"
    """``"module"`` (a core WebAssembly module) or ``"component"`` (a WASI 0.2 command)."""
    command: str = ""
    """A component's ``wasi:cli/run@0.2.x`` export, by name; ``""`` for a core module."""

    def describe(self) -> str:
        """What the module is, for ``wagi check`` and messages."""
        if self.kind == "component":
            return f"component, exports {self.command or 'no wasi:cli/run'}"
        return "module"


class Engine(abc.ABC):
    """A WebAssembly runtime that runs WASI commands."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, cache: ArtifactCache | None = None) -> None:
        """Make the engine: in a worker, never in the gunicorn master (an engine may start a
        compiler, and a forked child of a process that compiled hangs). ``cache`` keeps
        compiled modules for every worker and the next start; ``None`` keeps none."""
        self._cache = cache

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """The runtime's version, part of the compiled-artifact cache key."""

    @abc.abstractmethod
    def load(self, path: Path) -> LoadedModule:
        """Compile (or fetch from the artifact cache) a ``.wasm`` or ``.wat`` file.

        Raises :class:`EngineError` with a readable message when the file is not a
        valid module.
        """

    def prepare(self, module: LoadedModule, limits: Limits) -> None:  # noqa: B027
        """Do ahead of time what :meth:`run` will need under ``limits`` (at start-up).

        Raises :class:`EngineError` if ``module`` can never run under ``limits``.
        """

    def seal_cache(self) -> None:
        """Never touch the artifact cache again: this process is confined and may neither
        read it nor write it (a module file replaced on disk is compiled in memory)."""
        if self._cache is not None:
            self._cache.seal()

    @property
    def broken(self) -> str:
        """Why this engine can run nothing more, or ``""`` while it can.

        Once broken, :meth:`run` raises :class:`EngineBroken`; only a new process helps.
        """
        return ""

    @abc.abstractmethod
    def run(self, module: LoadedModule, invocation: Invocation) -> RunResult:
        """Instantiate ``module`` with WASI and call ``invocation.entrypoint``.

        Every outcome of the guest (return, exit, trap, timeout) is a
        :class:`RunResult`; only a failure to instantiate (say, a missing import)
        raises :class:`EngineError`.
        """

    @staticmethod
    def check_entrypoint(module: LoadedModule, name: str) -> None:
        """Raise :class:`EngineError` unless a run can call ``name`` (one of the module's
        :attr:`~LoadedModule.entrypoints`), saying why not in every engine's words."""
        if name in module.entrypoints:
            return
        if module.kind == "component":
            raise EngineError(
                f"{module.path}: a component runs as a whole; it has no export {name!r}"
            )
        if name not in module.exports:
            raise EngineError(f"{module.path}: no exported function {name!r}")
        raise EngineError(f"{module.path}: exported function {name!r} takes parameters")


COMPONENT_LAYER = b"\x0d\x00\x01\x00"
"""The 4 bytes after ``\\0asm`` in a component (version 0x0d, layer 1); a core module has
``01 00 00 00`` there."""


def is_component(wasm: bytes) -> bool:
    """Whether a WebAssembly binary is a component rather than a core module."""
    return wasm[:4] == b"\0asm" and wasm[4:8] == COMPONENT_LAYER


def file_is_component(path: Path) -> bool:
    """Whether the file at ``path`` is a binary component (text and unreadable files: no).

    Reads 8 bytes: cheap enough for policy, which runs before any engine exists.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    if head.startswith(b"\0asm"):
        return is_component(head)
    try:  # a .wat file: "(component" as its first form (comments aside, which are rare here)
        text = Path(path).read_text("utf-8", "replace")
    except OSError:
        return False
    return _first_form(text) == "component"


def _first_form(text: str) -> str:
    """The keyword of the first s-expression in WebAssembly text, skipping comments."""
    i, n = 0, len(text)
    while i < n:
        if text.startswith(";;", i):
            i = text.find("\n", i)
            i = n if i < 0 else i + 1
        elif text.startswith("(;", i):
            i = text.find(";)", i)
            i = n if i < 0 else i + 2
        elif text[i].isspace():
            i += 1
        elif text[i] == "(":
            j = i + 1
            while j < n and not text[j].isspace() and text[j] not in "()":
                j += 1
            return text[i + 1 : j]
        else:
            return ""
    return ""


def read_module(path: Path) -> bytes:
    """The module's binary: a ``.wasm`` as it is, WebAssembly text assembled.

    A file that starts with ``\\0asm`` is binary whatever its name; anything else
    must be UTF-8 WAT. Both engines use wasmtime's assembler (a dependency on every
    Python), so a ``.wat`` has the same bytes, and the same cache key, on both.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EngineError(f"{path}: cannot read module: {exc.strerror or exc}") from None
    if data.startswith(b"\0asm"):
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EngineError(
            f"{path}: not a WebAssembly module (no \\0asm header, and not UTF-8 text)"
        ) from None
    import wasmtime

    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise EngineError(f"{path}: not a valid WebAssembly text module: {first_line}") from None
