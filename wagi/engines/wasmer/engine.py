"""The wasmer engine: wasmer-python 1.1.0 with the cranelift compiler.

wasmer-python ships native wheels for CPython 3.7-3.10 only, so nothing in
wagi may import this module unconditionally; ask
:func:`wagi.engines.importable` first. The
``wasmer`` package itself is imported lazily, and nothing is compiled at import
time: a process that compiled with cranelift or ran a WASI instance must not
be forked and then compile or run again (the children hang).

wasmer-python has no stdio capture API, so a run redirects file descriptors
0, 1 and 2 with ``os.dup2`` for the duration of one call (a sync worker runs
one request at a time, and wasmer holds the GIL while the guest runs, so no
Python thread can write into the capture). The captures are memfds, never
pipes: with the GIL held nobody would drain a pipe, and a guest writing more
than the pipe buffer (64 KiB) would deadlock the worker.

Measured facts the code below is built around (wasmer 1.1.0, Linux):

- The guest's fds 0/1/2 are the process-wide Rust ``std::io`` handles.
  ``Stdin`` sits behind an 8 KiB ``BufReader``: bytes a guest leaves unread
  stay in that buffer and are handed to the *next* instance that reads stdin,
  another request's module. ``Stdout`` is a ``LineWriter``; wasmer flushes it
  after every ``fd_write``, but when the flush fails (say the capture file is
  full) wasmer still reports success to the guest and the bytes stay in the
  buffer, to come out at the start of the next request's output. After every
  run a tiny built-in *scrub* module therefore reads stdin until EOF and
  writes one newline to stdout, with fds 0 and 1 pointed at ``/dev/null``.
- ``proc_exit(n)`` and traps both arrive as ``RuntimeError``. An exit is
  exactly ``"RuntimeError: WASI exited with code: <n>"``, ``n`` the unsigned
  32-bit code; a trap is ``"RuntimeError: <reason>"`` followed by one
  ``"\\n    at ..."`` line per frame (a stack overflow renders every frame:
  about 33 MB of text, which the ``detail`` keeps only the start of).
- ``Module.deserialize`` trusts its input: a truncated or bit-flipped artifact
  crashes the process with SIGSEGV. Cached artifacts therefore carry a
  SHA-256 of their payload that is checked before deserializing.
- The guest sees a virtual ``/`` at fd 3 and the mapped directories from fd 4
  on (wasmtime starts preopens at fd 3), whatever the ``StateBuilder`` is told
  (``map_directory`` and ``preopen_directory`` alike). Code that takes its first
  preopen at fd 3 (Grain's runtime, WAGI's fileserver) would find nothing there,
  so a run with volumes renumbers them to fd 3 on, the virtual ``/`` after them
  (:class:`FdTable`). Mapped directories do not confine
  the guest: an absolute path opened relative to a mapped directory reaches
  the whole host file system (read, write, list), and host-placed symlinks
  are followed out of the directory. Volumes are refused (see
  :attr:`WasmerEngine.capabilities`); :class:`WasmerEngine` only maps
  directories when built with ``unconfined_volumes=True``, for experiments.
- wasmer-python has no store limiter, but a memory never grows past the
  maximum its type declares (``memory.grow`` returns -1). ``max_memory`` is
  enforced by running a copy of the module whose memory declares the limit
  (:func:`~wagi.engines.memory_cap.cap_memory`), compiled once per limit.
- wasmer's ``fd_write`` writes fd 1 and 2 to stdout and stderr by number, and its
  ``fd_renumber`` gives the new fd only the old one's *inheriting* rights (none,
  for stdio): stdout renumbered elsewhere (``fd_renumber(1, n)``) then fails every
  write with ``EACCES``. For a module that imports ``fd_renumber``, wagi's own
  ``fd_renumber``, ``fd_close`` and ``fd_write`` keep the module's fd table of
  stdout and stderr, as the wasmtime engine does, and write a renumbered stream
  into the run's capture itself (:class:`FdTable`).
- A native WASI function cannot be called from Python ("Native function
  definitions can't be directly called from the host yet"); a tiny module that
  imports the run's own WASI functions and exports them (:data:`FD_WAT`) can.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

from wagi.engines.base import (
    STDERR_LIMIT,
    Capabilities,
    Ending,
    Engine,
    EngineBroken,
    EngineError,
    Invocation,
    Limits,
    LoadedModule,
    RunResult,
    is_component,
    read_module,
    stderr_with_cap_note,
)
from wagi.engines.cache import ArtifactCache, content_hash
from wagi.engines.memory_cap import MemoryCapError, cap_memory
from wagi.engines.wasmer.captures import (
    SCRUB_WAT,
    ensure_std_fds,
    memfd,
    read_prefix,
    write_all,
)
from wagi.engines.wasmer.host import (
    FD_SHADOWED,
    FD_WAT,
    OUTBOUND_MARGIN,
    FdTable,
    HttpBinding,
)
from wagi.outbound.abi import (
    IMPORT_MODULE,
    SIGNATURES,
    OutboundSession,
)
from wagi.outbound.policy import DENY_ALL

__all__ = ["WasmerEngine", "WasmerModule"]

_EXIT_MESSAGE = re.compile(r"RuntimeError: WASI exited with code: ([0-9]{1,10})")
"""The whole message of a ``proc_exit``; matched in full, so a trap can never pass for one."""

_WASI_NAMESPACES = frozenset({"wasi_snapshot_preview1", "wasi_unstable"})
"""The only import namespaces a module can link against here."""

_LINK_ERROR_PREFIX = "Error while importing "
"""How wasmer words a missing or mistyped import at instantiation."""

_DETAIL_MAX = 2000
"""Characters of a trap message kept for the log (a stack overflow message is ~33 MB)."""


def _import_wasmer() -> tuple[Any, Any]:
    """The ``wasmer`` module and the cranelift ``Compiler``, or EngineError."""
    from wagi.engines import importable

    ok, why = importable("wasmer")
    if not ok:
        raise EngineError(why)
    import wasmer
    from wasmer_compiler_cranelift import Compiler

    return wasmer, Compiler


def _first_lines(message: str, limit: int = _DETAIL_MAX) -> str:
    message = message[: limit + 1]
    if message.startswith("RuntimeError: "):
        message = message[len("RuntimeError: ") :]
    if len(message) > limit:
        message = message[:limit].rsplit("\n", 1)[0] + "\n    ..."
    return message


@dataclass(frozen=True)
class _Compiled:
    """A compiled module and the Store it lives in (never share a Store between modules)."""

    store: Any
    module: Any


@dataclass
class WasmerModule(LoadedModule):
    """A compiled module and the Store it lives in.

    Each module gets its own Store: compiling or deserializing many modules
    into one long-lived Store leaks memory in wasmer 1.1.0. So does each
    memory-capped variant.
    """

    path: Path
    exports: frozenset[str]
    digest: str
    store: Any
    module: Any
    wasi_version: Any
    params: dict[str, int]
    """Parameter count of each exported function."""
    wasm: bytes = field(repr=False)
    """The binary it was compiled from, the source of its memory-capped variants."""
    capped: dict[int, _Compiled | str] = field(default_factory=dict, repr=False)
    """By ``max_memory``: the variant that cannot grow past it, or why there is none."""
    imports_http: bool = False
    """Whether it imports ``wasi_experimental_http`` (outbound HTTP)."""
    renumbers: bool = False
    """Whether it imports WASI's ``fd_renumber`` (its stdout may move to another fd)."""
    entrypoints: frozenset[str] = frozenset()


class WasmerEngine(Engine):
    """wasmer-python + cranelift (universal engine), run CGI-style.

    Not thread-safe: a run owns the process's fds 0-2. Use one engine per
    worker process, created after the fork.
    """

    name = "wasmer"
    capabilities = Capabilities(
        # Absolute paths and symlinks reach the whole host file system.
        volumes=False,
        # wasmer-python's preopens have no read-only mode.
        read_only_volumes=False,
        # No store limiter in the Python API: a copy of the module whose
        # memory declares the limit as its maximum is run instead.
        memory_limit=True,
        # A running guest holds the GIL in native code; only ending the
        # process stops it (the HTTP side's watchdog does that).
        interruptible=False,
        # wasmer-python objects panic ("unsendable") when used on another thread than
        # the one that created them.
        thread_safe=False,
        # Python host functions in the import object, memory from the instance.
        outbound_http=True,
    )

    _cache: ArtifactCache
    """Never ``None`` here: a cache without a directory stands in for none."""

    def __init__(self, cache: ArtifactCache | None = None, *, unconfined_volumes: bool = False):
        """``unconfined_volumes`` lets :meth:`run` map directories anyway.

        Only for measurements and tests: a mapped directory does not confine
        the guest (see the module docstring). wagi never sets it.
        """
        self._wasmer, self._compiler = _import_wasmer()
        ensure_std_fds()
        super().__init__(cache or ArtifactCache(None))
        self._unconfined_volumes = unconfined_volumes
        self._scrubber: Any = None
        # Opened now, not at the first run: a thread confined by the kernel wall after
        # creating the engine and loading its modules may open no path at all.
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._poisoned = ""
        self._http = HttpBinding()
        self._fds = FdTable()
        self._fd_functions: dict[int, tuple[Any, Any, dict[str, Any]]] = {}
        """By ``id(store)``: the store (kept alive), :data:`FD_WAT` compiled into it, and
        wagi's own ``fd_*`` functions there; made once per Store, like the HTTP ones."""
        self._http_functions: dict[int, tuple[Any, dict[str, Any]]] = {}
        """By ``id(store)``: the store (kept alive) and its ``wasi_experimental_http``
        functions. wasmer keeps every function made in a Store until the Store goes,
        so they are made once per Store, never per run."""
        self.stale_stdin_bytes = 0
        """Stdin bytes guests left unread, scrubbed before the next run (for tests/metrics)."""

    @property
    def version(self) -> str:
        return str(self._wasmer.__version__)

    @property
    def broken(self) -> str:
        return self._poisoned

    @property
    def _cache_version(self) -> str:
        """Artifacts are native code: key them by compiler and CPU architecture too."""
        return f"{self.version}-cranelift-universal-{platform.machine() or 'unknown'}"

    def _new_store(self) -> Any:
        return self._wasmer.Store(self._wasmer.engine.Universal(self._compiler))

    # -- loading -----------------------------------------------------------

    def load(self, path: Path) -> WasmerModule:
        path = Path(path)
        wasm = read_module(path)
        if is_component(wasm):
            raise EngineError(
                f"{path}: a WebAssembly component (WASI 0.2); the wasmer engine runs core "
                "modules only: use the wasmtime engine"
            )
        return self._load(path, wasm)

    def load_same(self, module: LoadedModule) -> WasmerModule:
        """``module`` (loaded by another engine) loaded here from the very bytes it was
        compiled from, not from its file, which may have changed since."""
        own = self._own(module)
        return self._load(own.path, own.wasm)

    def _load(self, path: Path, wasm: bytes) -> WasmerModule:
        digest = content_hash(wasm)
        store, module = self._compile_cached(path, wasm, digest)
        params = {
            export.name: len(export.type.params)
            for export in module.exports
            if isinstance(export.type, self._wasmer.FunctionType)
        }
        wasi_version = self._wasmer.wasi.get_version(module, strict=False)
        if wasi_version is None:  # no WASI imports at all: any version links
            wasi_version = self._wasmer.wasi.Version.SNAPSHOT1
        return WasmerModule(
            path=path,
            exports=frozenset(params),
            entrypoints=frozenset(name for name, count in params.items() if not count),
            digest=digest,
            store=store,
            module=module,
            wasi_version=wasi_version,
            params=params,
            wasm=wasm,
            imports_http=any(item.module == IMPORT_MODULE for item in module.imports),
            renumbers=any(
                item.module in _WASI_NAMESPACES and item.name == "fd_renumber"
                for item in module.imports
            ),
        )

    def _compile_cached(self, path: Path, wasm: bytes, digest: str) -> tuple[Any, Any]:
        """A new Store and ``wasm`` compiled into it, from the artifact cache when there."""
        store = self._new_store()
        module = self._from_cache(store, digest)
        if module is None:
            module = self._compile(path, store, wasm)
            self._cache.put(self.name, self._cache_version, digest, bytes(module.serialize()))
        return store, module

    def _compile(self, path: Path, store: Any, wasm: bytes) -> Any:
        try:
            return self._wasmer.Module(store, wasm)
        except Exception as exc:
            reason = _first_lines(str(exc))
            raise EngineError(f"{path}: invalid WebAssembly module: {reason}") from exc

    def _from_cache(self, store: Any, digest: str) -> Any:
        """A deserialized artifact, or None (the cache never returns a damaged one)."""
        payload = self._cache.get(self.name, self._cache_version, digest)
        if payload is None:
            return None
        try:
            return self._wasmer.Module.deserialize(store, payload)
        except Exception:
            self._cache.discard(self.name, self._cache_version, digest)
            return None

    def _limited(self, module: WasmerModule, max_memory: int | None) -> _Compiled:
        """What to instantiate for a run whose memory may not grow past ``max_memory``.

        A variant is compiled (or fetched from the artifact cache, keyed by its
        own bytes) the first time a limit is asked for, and kept. A module that
        cannot be capped raises :class:`EngineError` every time it is asked.
        """
        if max_memory is None:
            return _Compiled(module.store, module.module)
        variant = module.capped.get(max_memory)
        if variant is None:
            variant = module.capped[max_memory] = self._cap(module, max_memory)
        if isinstance(variant, str):
            raise EngineError(variant)
        return variant

    def _cap(self, module: WasmerModule, max_memory: int) -> _Compiled | str:
        try:
            wasm = cap_memory(module.wasm, max_memory)
        except MemoryCapError as exc:
            return f"{module.path}: cannot limit its memory: {exc}"
        if wasm == module.wasm:  # its declared maximum is already within the limit
            return _Compiled(module.store, module.module)
        return _Compiled(*self._compile_cached(module.path, wasm, content_hash(wasm)))

    def prepare(self, module: LoadedModule, limits: Limits) -> None:
        """Compile now what :meth:`run` will need under ``limits``.

        Meant for start-up (the ``wagi check`` helper fills the artifact cache
        with it); raises :class:`EngineError` if ``module`` cannot run under
        ``limits`` at all, e.g. it needs more memory at start than ``max_memory``.
        """
        own = self._own(module)
        for item in own.module.imports:
            if item.module == IMPORT_MODULE:
                self._check_http_import(own, item)
            elif item.module not in _WASI_NAMESPACES:
                raise EngineError(
                    f"{module.path}: cannot be instantiated: it imports "
                    f"{item.module}::{item.name}, and wagi provides only WASI "
                    f"({', '.join(sorted(_WASI_NAMESPACES))})"
                )
        self._limited(own, limits.max_memory)

    def _check_http_import(self, module: WasmerModule, item: Any) -> None:
        i32 = self._wasmer.Type.I32
        count = SIGNATURES.get(item.name)
        ty = item.type
        if (
            count is None
            or not isinstance(ty, self._wasmer.FunctionType)
            or list(ty.params) != [i32] * count
            or list(ty.results) != [i32]
        ):
            raise EngineError(
                f"{module.path}: cannot be instantiated: it imports "
                f"{IMPORT_MODULE}::{item.name}, which is not a function of the "
                f"{IMPORT_MODULE} ABI with that type (wagi provides "
                f"{', '.join(sorted(SIGNATURES))})"
            )

    # -- running -----------------------------------------------------------

    @staticmethod
    def _own(module: LoadedModule) -> WasmerModule:
        if not isinstance(module, WasmerModule):
            raise EngineError(f"{module.path}: not loaded by the wasmer engine")
        return module

    def run(self, module: LoadedModule, invocation: Invocation) -> RunResult:
        module = self._own(module)
        if self._poisoned:
            raise EngineBroken(self._poisoned)
        entry = invocation.entrypoint
        self.check_entrypoint(module, entry)
        limits = invocation.limits
        compiled = self._limited(module, limits.max_memory)
        fds = self._fds if (module.renumbers or invocation.preopens) else None
        imports = self._wasi_imports(module, compiled.store, invocation, fds)
        http: HttpBinding | None = None
        if module.imports_http:
            deadline = limits.deadline(OUTBOUND_MARGIN)
            http = self._http
            http.start(OutboundSession(invocation.outbound or DENY_ALL, deadline))
            imports.register(IMPORT_MODULE, self._http_imports(compiled.store))

        outcome: tuple[Ending, int, str] | None = None
        link_error = ""
        stdin_fd = (
            memfd("stdin", None)
            if invocation.stdin_file is None
            else os.open(invocation.stdin_file, os.O_RDONLY | os.O_CLOEXEC)
        )
        stdout_fd = memfd("stdout", limits.max_output)
        stderr_fd = memfd("stderr", STDERR_LIMIT)
        try:
            if invocation.stdin_file is None:
                write_all(stdin_fd, invocation.stdin)
                os.lseek(stdin_fd, 0, os.SEEK_SET)
            started = time.monotonic()
            with self._stdio(stdin_fd, stdout_fd, stderr_fd):
                instance = None
                try:
                    instance = self._wasmer.Instance(compiled.module, imports)
                    if http is not None:
                        http.instance = instance
                    if fds is not None:
                        fds.attach(self._wasmer, instance, self._fd_module(compiled.store))
                        fds.move_volumes(len(invocation.preopens))
                    if entry != "_start" and "_initialize" in module.params:
                        instance.exports._initialize()
                    getattr(instance.exports, entry)()
                    outcome = (Ending.RETURNED, 0, "")
                except Exception as exc:
                    message = str(exc)
                    if instance is None and message.startswith(_LINK_ERROR_PREFIX):
                        link_error = _first_lines(message)
                    else:
                        outcome = self._ending(exc, message)
            elapsed = time.monotonic() - started
            if link_error:
                raise EngineError(f"{module.path}: cannot instantiate: {link_error}")
            assert outcome is not None
            ending, exit_code, detail = outcome
            if http is not None and http.session.timed_out:
                ending = Ending.TIMED_OUT
                detail = "an outbound HTTP request reached the module's deadline"
                elapsed = 0.0  # the timeout is already what happened
            written = os.lseek(stdout_fd, 0, os.SEEK_CUR)
            then = f"; the guest {ending.value} {detail}".rstrip()
            if limits.timeout is not None and elapsed > limits.timeout:
                # Not interrupted (wasmer cannot): noticed when the guest ended.
                ending = Ending.TIMED_OUT
                detail = f"ran {elapsed:.3f} s, past the {limits.timeout} s timeout{then}"
                detail += " (wasmer cannot interrupt a guest; the watchdog may end the worker)"
            elif limits.max_output is not None and written > limits.max_output:
                ending = Ending.OUTPUT_TOO_LARGE
                detail = f"wrote at least {written} bytes to stdout, over the "
                detail += f"{limits.max_output} byte limit{then}"
            too_large = ending is Ending.OUTPUT_TOO_LARGE
            stdout = b"" if too_large else read_prefix(stdout_fd, written)
            stderr = self._stderr(stderr_fd)
            if http is not None:
                stderr += http.session.report()
            return RunResult(
                ending=ending,
                stdout=stdout,
                stderr=stderr,
                exit_code=exit_code,
                detail=detail,
            )
        finally:
            if http is not None:
                http.end()
            if fds is not None:
                fds.end()
            for fd in (stdin_fd, stdout_fd, stderr_fd):
                os.close(fd)

    def _http_imports(self, store: Any) -> dict[str, Any]:
        entry = self._http_functions.get(id(store))
        if entry is None:
            entry = self._http_functions[id(store)] = (
                store,
                self._http.functions(self._wasmer, store),
            )
        return entry[1]

    def _fd_module(self, store: Any) -> Any:
        return self._fd_store(store)[1]

    def _fd_store(self, store: Any) -> tuple[Any, Any, dict[str, Any]]:
        entry = self._fd_functions.get(id(store))
        if entry is None:
            wasm = bytes(wasmtime.wat2wasm(FD_WAT))
            entry = self._fd_functions[id(store)] = (
                store,
                self._wasmer.Module(store, wasm),
                self._fds.functions(self._wasmer, store),
            )
        return entry

    def _wasi_imports(
        self,
        module: WasmerModule,
        store: Any,
        invocation: Invocation,
        fds: FdTable | None = None,
    ) -> Any:
        """A fresh WASI state: argv, exactly ``invocation.env``, and (if allowed) preopens.

        With ``fds``, the run's own ``fd_*`` functions go to ``fds`` (which calls them from
        Python), and a module that renumbers its fds gets wagi's in their place.
        """
        wasi = self._wasmer.wasi
        argv = list(invocation.argv)
        # wasmer always passes a program name; an empty argv becomes [""].
        builder = wasi.StateBuilder(argv[0] if argv else "")
        if argv[1:]:
            builder.arguments(argv[1:])
        if invocation.env:
            builder.environments(dict(invocation.env))
        if invocation.limits.max_write is not None:
            raise EngineError(
                "the wasmer engine cannot bound what a module writes to files (a scratch "
                "directory's max_size); use the wasmtime engine"
            )
        for preopen in invocation.preopens:
            if not self._unconfined_volumes:
                raise EngineError(
                    "the wasmer engine cannot confine a module to its volumes (absolute paths "
                    "and symlinks reach the host file system); use the wasmtime engine"
                )
            if preopen.read_only:
                raise EngineError(
                    "the wasmer engine has no read-only volumes; use the wasmtime engine"
                )
            builder.map_directory(preopen.guest_path, str(preopen.host_path))
        # The functions as a dict cost about 40 µs more than wasmer's own import object:
        # only a module whose functions wagi replaces (or that uses the older WASI
        # namespace, which FD_WAT does not import from) pays for it.
        plain = fds is None or (
            not module.renumbers and module.wasi_version == self._wasmer.wasi.Version.SNAPSHOT1
        )
        try:
            state = builder.finalize()
            if plain:
                imports = state.generate_import_object(store, module.wasi_version)
                if fds is not None:
                    fds.real = imports
                return imports
            namespaces = state.generate_imports(store, module.wasi_version)
        except Exception as exc:  # a NUL in argv/env, '=' in a name, a missing directory
            reason = _first_lines(str(exc))
            raise EngineError(f"{module.path}: invalid WASI state: {reason}") from exc
        assert fds is not None
        imports = self._wasmer.ImportObject()
        fds.real = self._wasmer.ImportObject()
        for name, functions in namespaces.items():
            fds.real.register("wasi_snapshot_preview1", {fd: functions[fd] for fd in FD_SHADOWED})
            if module.renumbers:
                functions = {**functions, **self._fd_store(store)[2]}
            imports.register(name, functions)
        return imports

    @staticmethod
    def _ending(exc: Exception, message: str) -> tuple[Ending, int, str]:
        """Tell ``proc_exit`` from a trap: only an exact exit message is an exit.

        Trap messages end with one line per frame, so a function named like the
        exit message cannot fake one: the whole message must match.
        """
        match = _EXIT_MESSAGE.fullmatch(message) if type(exc) is RuntimeError else None
        if match:
            code = int(match.group(1))
            if code == 0:
                return Ending.RETURNED, 0, ""
            return Ending.EXITED, code, f"exit code {code}"
        return Ending.TRAPPED, 0, _first_lines(message)

    @staticmethod
    def _stderr(fd: int) -> bytes:
        written = os.lseek(fd, 0, os.SEEK_CUR)
        data = read_prefix(fd, min(written, STDERR_LIMIT))
        return stderr_with_cap_note(data, max(written - STDERR_LIMIT, 0))

    @contextmanager
    def _stdio(self, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> Iterator[None]:
        """Point fds 0-2 at the captures; afterwards scrub Rust's buffers and restore them.

        Restoring happens whatever goes wrong, so the worker never loses its own
        stdout/stderr (gunicorn's logs) to a capture file.
        """
        for stream in (sys.stdout, sys.stderr):
            # Python's own buffered output must not land in a capture.
            with suppress(AttributeError, OSError, ValueError):
                stream.flush()
        devnull = self._devnull
        saved = [os.dup(fd) for fd in (0, 1, 2)]
        try:
            os.dup2(stdin_fd, 0)
            os.dup2(stdout_fd, 1)
            os.dup2(stderr_fd, 2)
            try:
                yield
            finally:
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                self._scrub()
        finally:
            for fd, copy in enumerate(saved):
                os.dup2(copy, fd)
                os.close(copy)

    def _scrub(self) -> None:
        """Empty Rust's stdin buffer and stdout LineWriter (fds 0 and 1 are /dev/null now).

        If this ever fails the next request could see this one's bytes, so the
        engine refuses all further runs instead.
        """
        try:
            if self._scrubber is None:
                store = self._new_store()
                wasm = bytes(wasmtime.wat2wasm(SCRUB_WAT))
                scrub_module = self._wasmer.Module(store, wasm)
                wasi = self._wasmer.wasi
                imports = (
                    wasi.StateBuilder("scrub")
                    .finalize()
                    .generate_import_object(store, wasi.Version.SNAPSHOT1)
                )
                self._scrubber = self._wasmer.Instance(scrub_module, imports).exports.scrub
            self.stale_stdin_bytes += int(self._scrubber())
        except Exception as exc:
            self._poisoned = (
                f"wasmer engine disabled: clearing stdio buffers between runs failed ({exc}); "
                "restart the worker"
            )
            raise EngineBroken(self._poisoned) from exc
