"""WASI 0.2 command components on the wasmtime engine.

A *component* (the 4 bytes after ``\\0asm`` are ``0d 00 01 00``) that exports
``wasi:cli/run@0.2.x`` is a command like a core WASI module: argv, environment,
stdin, stdout, stderr and preopened directories. :class:`ComponentRunner` is the part
of :class:`~wagi.engines.wasmtime.engine.WasmtimeEngine` that loads and runs them, on
the same ``wasmtime.Engine`` (epoch interruption, pooling allocator, artifact cache).

How a run goes, and why:

- Once per component: compiled (or fetched from the artifact cache), its imports
  checked against what wagi confines, the export index of ``run`` found. wasmtime's
  C API has no ``InstancePre`` for components, so each run instantiates through the
  component linker; the pooling allocator and copy-on-write memory images (wasmtime's
  defaults under pooling) make that cheap: the 18 MB componentize-py hello
  instantiates in about 0.3 ms (docs/performance.md has the figures).
- Per run, through the C API (:mod:`wagi.engines.wasmtime.capi`'s handle): a Store, a WASI context
  (the same ``wasi_config_t`` as a core module's, which wasmtime serves as WASI 0.2 to
  components), instantiate, call ``run``, drop the Store.
- stdout and stderr are *custom streams*: wasmtime calls :func:`_stream_write` with each
  write's bytes, on the thread running the guest. stdout goes through the core run's
  :meth:`_Run.deliver <wagi.engines.wasmtime.run._Run.deliver>` (the output limit,
  streaming to ``Invocation.stdout``, a sink), exactly as a core module's ``fd_write``
  does; stderr is kept up to :data:`~.base.STDERR_LIMIT`.
- A stop decided in a write (output too large, client gone) cannot trap there: the
  write fails for the guest, and the epoch callback ends the run at its next tick.
  Every component run therefore ticks, timed or not.
- Imports: the WASI 0.2 interfaces wasmtime provides and confines (filesystem only
  through the preopens, no network: wasmtime's default WASI context denies every
  socket address and name lookup). ``wasi:http`` is refused: the C API's outgoing
  handler sends any request (it has no hook where wagi could apply ``allowed_hosts``).
  Anything else is refused at start-up, by name.

Not enforced for components (the C API offers no hook on WASI 0.2's filesystem
streams or pollables): the write budget (``Limits.max_write``, so no ``tmp`` scratch
directory: :meth:`ComponentRunner.prepare` refuses it), and a timeout *during* a host
sleep (a guest blocked in ``wasi:io/poll`` is stopped when the sleep returns).
"""

from __future__ import annotations

import ctypes
import errno
import re
import time
from ctypes import byref, c_bool, c_size_t, c_ssize_t, c_void_p
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wasmtime
import wasmtime.component
from wasmtime import _ffi

from wagi.engines.base import (
    Ending,
    EngineError,
    Invocation,
    Limits,
    LoadedModule,
    RunResult,
)
from wagi.engines.wasmtime import capi
from wagi.engines.wasmtime.run import _one_line, _outcome, _Run, _Stop
from wagi.engines.wasmtime.wasi import _set_wasi, _wasi_config

if TYPE_CHECKING:
    from wagi.engines.wasmtime.engine import WasmtimeEngine

__all__ = ["ComponentModule", "ComponentRunner", "import_problem"]

lib = capi.lib

# Structures passed by pointer; their layout is wasmtime's (checked by check()).
ComponentInstance = _ffi.wasmtime_component_instance_t
ComponentFunc = _ffi.wasmtime_component_func_t
ComponentVal = _ffi.wasmtime_component_val_t
_RESULT = int(_ffi.WASMTIME_COMPONENT_RESULT.value)

StreamCallback = ctypes.CFUNCTYPE(c_ssize_t, c_void_p, c_void_p, c_size_t)
"""``wasi_config_set_stdout_custom``'s callback: (data, buffer, length) -> written or -errno."""

_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "wasmtime_component_linker_instantiate": (c_void_p, [c_void_p, c_void_p, c_void_p, c_void_p]),
    "wasmtime_component_instance_get_func": (c_bool, [c_void_p, c_void_p, c_void_p, c_void_p]),
    "wasmtime_component_func_call": (
        c_void_p,
        [c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t],
    ),
    "wasmtime_component_val_delete": (None, [c_void_p]),
    "wasi_config_set_stdout_custom": (None, [c_void_p, StreamCallback, c_void_p, capi.FINALIZER]),
    "wasi_config_set_stderr_custom": (None, [c_void_p, StreamCallback, c_void_p, capi.FINALIZER]),
    "wasmtime_pooling_allocation_config_total_component_instances_set": (
        None,
        [c_void_p, ctypes.c_uint32],
    ),
    "wasmtime_pooling_allocation_config_max_core_instances_per_component_set": (
        None,
        [c_void_p, ctypes.c_uint32],
    ),
    "wasmtime_pooling_allocation_config_max_memories_per_component_set": (
        None,
        [c_void_p, ctypes.c_uint32],
    ),
    "wasmtime_pooling_allocation_config_max_tables_per_component_set": (
        None,
        [c_void_p, ctypes.c_uint32],
    ),
    "wasmtime_pooling_allocation_config_max_component_instance_size_set": (
        None,
        [c_void_p, c_size_t],
    ),
    "wasmtime_pooling_allocation_config_max_core_instance_size_set": (None, [c_void_p, c_size_t]),
    "wasmtime_pooling_allocation_config_table_elements_set": (None, [c_void_p, c_size_t]),
}

_lib = ctypes.CDLL(_ffi.dll._name)
"""A handle of our own for these prototypes (wasmtime-py's calls keep their declarations)."""
capi.declare(_lib, _PROTOTYPES)

_SIZES = {
    "wasmtime_component_instance_t": (ComponentInstance, 16),
    "wasmtime_component_func_t": (ComponentFunc, 32),
    "wasmtime_component_val_t": (ComponentVal, 32),
}


def check() -> None:
    """Raise ImportError if this wasmtime library is not the one this file was written for."""
    capi.check_library(_lib, _PROTOTYPES, _SIZES)
    if _RESULT != 19:
        raise ImportError(f"wasmtime's WASMTIME_COMPONENT_RESULT is {_RESULT}, wagi expects 19")


check()

# -- what a component may import ------------------------------------------------------

_NAME = re.compile(
    r"(?P<package>[a-z][a-z0-9-]*:[a-z][a-z0-9-]*)/(?P<interface>[a-z0-9-]+)@(?P<version>\S+)"
)
"""An import's name: ``package:namespace/interface@version``."""

_CONFINED = {
    "wasi:io": {"error", "poll", "streams"},
    "wasi:clocks": {"monotonic-clock", "wall-clock"},
    "wasi:random": {"random", "insecure", "insecure-seed"},
    "wasi:cli": {
        "environment",
        "exit",
        "stdin",
        "stdout",
        "stderr",
        "terminal-input",
        "terminal-output",
        "terminal-stdin",
        "terminal-stdout",
        "terminal-stderr",
    },
    "wasi:filesystem": {"types", "preopens"},
    # Provided, and denied: wasmtime's WASI context allows no socket address and no name
    # lookup unless told to, and wagi never tells it. Toolchains import these whether the
    # program uses them or not (componentize-py's CPython always does).
    "wasi:sockets": {
        "network",
        "instance-network",
        "ip-name-lookup",
        "tcp",
        "tcp-create-socket",
        "udp",
        "udp-create-socket",
    },
}

RUN_INTERFACE = "wasi:cli/run"

NO_WRITE_BUDGET = (
    "wagi cannot bound what a component writes to files (wasmtime's C API has no hook on "
    "WASI 0.2's file streams), so a component gets no scratch directory ('tmp')"
)


def import_problem(name: str) -> str | None:
    """Why wagi cannot give a component the import ``name``, or None when it can."""
    match = _NAME.fullmatch(name)
    if match is None:
        return f"imports {name!r}, which wagi does not provide (it provides WASI 0.2 only)"
    package, interface, version = match["package"], match["interface"], match["version"]
    if package == "wasi:http":
        return (
            f"imports {name!r}: wagi cannot confine wasi:http (wasmtime's C API sends any "
            "request, with no hook where a route's allowed_hosts could apply); build the "
            "component without HTTP (componentize-js: --disable http fetch-event)"
        )
    if interface not in _CONFINED.get(package, ()):
        return f"imports {name!r}, which wagi does not provide"
    if not version.startswith("0.2."):
        return f"imports {name!r}: wagi provides WASI 0.2.x, not {version}"
    return None


# -- the module ------------------------------------------------------------------------


class ComponentModule(LoadedModule):
    """A compiled ``wasi:cli/run`` component of one :class:`WasmtimeEngine`."""

    kind = "component"

    def __init__(
        self,
        *,
        path: Path,
        component: wasmtime.component.Component,
        digest: str,
        from_cache: bool,
        owner: WasmtimeEngine,
        imports: tuple[str, ...],
        command: str,
        run_index: wasmtime.component.ExportIndex | None,
    ) -> None:
        self.path = path
        self.component = component
        self.digest = digest
        self.from_cache = from_cache
        self._owner = owner
        self.imports = imports
        """Every interface the component imports, by name (``wasi:cli/stdout@0.2.0``, ...)."""
        self.command = command
        self.exports = frozenset({"_start"})
        """A component has one way in: it answers to the default entrypoint, ``_start``
        (one that is no command is refused by :meth:`ComponentRunner.prepare`, saying so)."""
        self.entrypoints = self.exports
        self._run_index = run_index
        self._component_ptr = ctypes.cast(component.ptr(), c_void_p).value
        self._run_ptr = ctypes.cast(run_index.ptr(), c_void_p).value if run_index else None
        self._linked = False
        """A trial instantiation succeeded (done once, at the first prepare)."""

    def __repr__(self) -> str:
        return f"<ComponentModule {str(self.path)!r} {self.digest[:12]}>"


# -- the runner --------------------------------------------------------------------------


_ACTIVE: dict[int, _Run] = {}
"""Runs in progress, by the key their WASI streams carry (the ``id`` of their :class:`_Run`)."""

_STDOUT_KEY_BIT = 1
"""The low bit of a stream's data pointer: set for stdout, clear for stderr."""


@StreamCallback  # type: ignore[untyped-decorator]
def _stream_write(data: int, buffer: int, length: int) -> int:
    """wasmtime's custom-stream write: every byte accepted, or a negative errno."""
    key = data or 0
    run = _ACTIVE.get(key & ~_STDOUT_KEY_BIT)
    if run is None:
        return -errno.EBADF
    if run.stopped is not None:
        return -errno.EIO
    if not key & _STDOUT_KEY_BIT:
        run.keep_stderr(buffer, length)
        return length
    try:
        run.check_deadline()
        if length:
            run.deliver(buffer, length)
    except _Stop as stop:
        # The guest sees a failed write; the epoch callback ends it at its next tick.
        run.stop(stop.ending, stop.detail)
        return -errno.EIO
    except BaseException as exc:  # a bug here must end this run only, with a reason
        run.stop(Ending.TRAPPED, f"wagi stdout failed: {exc!r}")
        return -errno.EIO
    return length


class ComponentRunner:
    """Loads and runs components for one :class:`WasmtimeEngine` (its engine, cache, ticker)."""

    def __init__(self, owner: WasmtimeEngine) -> None:
        self._owner = owner
        self._linker = wasmtime.component.Linker(owner._engine)
        self._linker.add_wasip2()
        self._linker_ptr = ctypes.cast(self._linker.ptr(), c_void_p).value

    # -- loading -----------------------------------------------------------------------

    def load(self, path: Path, wasm: bytes, digest: str) -> ComponentModule:
        owner = self._owner
        component, from_cache = self._compile(path, wasm, digest)
        engine = owner._engine
        ty = component.type
        imports = tuple(ty.imports(engine))
        command = next((n for n in ty.exports(engine) if n.startswith(RUN_INTERFACE + "@")), "")
        run_index = None
        if command:
            interface = component.get_export_index(command)
            if interface is not None:
                run_index = component.get_export_index("run", interface)
        return ComponentModule(
            path=path,
            component=component,
            digest=digest,
            from_cache=from_cache,
            owner=owner,
            imports=imports,
            command=command if run_index is not None else "",
            run_index=run_index,
        )

    def _compile(
        self, path: Path, wasm: bytes, digest: str
    ) -> tuple[wasmtime.component.Component, bool]:
        """Fetch from the artifact cache, or compile and store (the core modules' cache)."""
        owner = self._owner
        cache, version = owner._cache, owner._version
        if cache is not None:
            payload = cache.get(owner.name, version, digest)
            if payload is not None:
                try:
                    return wasmtime.component.Component.deserialize(owner._engine, payload), True
                except wasmtime.WasmtimeError:
                    cache.discard(owner.name, version, digest)
        try:
            component = wasmtime.component.Component(owner._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise EngineError(
                f"{path}: not a valid WebAssembly component: {_one_line(str(exc))}"
            ) from None
        if cache is not None:
            cache.put(owner.name, version, digest, bytes(component.serialize()))
        return component, False

    # -- checking ----------------------------------------------------------------------

    def prepare(self, module: ComponentModule, limits: Limits) -> None:
        """Refuse at start-up a component that is no command, imports what wagi cannot
        confine, or needs what components cannot have (a write budget, which the layer
        above also refuses by name: the ``tmp`` key)."""
        if not module.command:
            raise EngineError(
                f"{module.path}: a component that exports no {RUN_INTERFACE}@0.2.x (not a "
                "command); wagi runs commands"
            )
        for name in module.imports:
            problem = import_problem(name)
            if problem:
                raise EngineError(f"{module.path}: the component {problem}")
        if limits.max_write is not None:
            raise EngineError(f"{module.path}: {NO_WRITE_BUDGET}")
        if not module._linked:
            self._trial(module)
            module._linked = True

    def _trial(self, module: ComponentModule) -> None:
        """Instantiate once in a throwaway store: a link error shows at start-up, not per run."""
        store = lib.wasmtime_store_new(self._owner._engine_ptr, None, capi.NO_FINALIZER)
        try:
            ctx = lib.wasmtime_store_context(store)
            lib.wasmtime_context_set_epoch_deadline(ctx, 1 << 62)
            error = lib.wasmtime_context_set_wasi(ctx, lib.wasi_config_new())
            if error:
                lib.wasmtime_error_delete(error)
            instance = ComponentInstance()
            error = _lib.wasmtime_component_linker_instantiate(
                self._linker_ptr, ctx, module._component_ptr, byref(instance)
            )
            if error:
                message = capi.take_message(lib.wasmtime_error_message, error)
                lib.wasmtime_error_delete(error)
                raise EngineError(f"{module.path}: cannot be instantiated: {_one_line(message)}")
        finally:
            lib.wasmtime_store_delete(store)

    # -- running -----------------------------------------------------------------------

    def run(self, module: ComponentModule, invocation: Invocation) -> RunResult:
        owner = self._owner
        if module._run_ptr is None:
            raise EngineError(f"{module.path}: the component exports no {RUN_INTERFACE}")
        owner.check_entrypoint(module, invocation.entrypoint)
        limits = invocation.limits
        if limits.max_write is not None:
            raise EngineError(f"{module.path}: {NO_WRITE_BUDGET}")
        store = lib.wasmtime_store_new(owner._engine_ptr, None, capi.NO_FINALIZER)
        ctx = lib.wasmtime_store_context(store)
        key = 0
        ticking = False
        try:
            clock_origin_ns = time.monotonic_ns()
            wasi = _wasi_config(module.path, invocation)
            deadline = limits.deadline()
            run = _Run(owner, ctx, invocation, deadline, clock_origin_ns)
            key = id(run)
            _ACTIVE[key] = run
            _lib.wasi_config_set_stdout_custom(
                wasi, _stream_write, key | _STDOUT_KEY_BIT, capi.NO_FINALIZER
            )
            _lib.wasi_config_set_stderr_custom(wasi, _stream_write, key, capi.NO_FINALIZER)
            _set_wasi(ctx, module.path, wasi)
            if limits.max_memory is not None:
                lib.wasmtime_store_limiter(store, limits.max_memory, -1, -1, -1, -1)
            # Always ticking: a stop decided in a stream write lands at the next tick.
            lib.wasmtime_store_epoch_deadline_callback(
                store, owner._on_deadline, None, capi.NO_FINALIZER
            )
            lib.wasmtime_context_set_epoch_deadline(ctx, 1)
            owner._ticker.start_run()
            ticking = True
            owner._local.run = run
            try:
                ending, exit_code, detail = self._call(module, ctx, run)
            finally:
                owner._local.run = None
        finally:
            if ticking:
                owner._ticker.end_run()
            _ACTIVE.pop(key, None)
            lib.wasmtime_store_delete(store)
        return run.result(ending, exit_code, detail)

    def _call(self, module: ComponentModule, ctx: int, run: _Run) -> tuple[Ending, int, str]:
        """Instantiate and call ``run``; how it ended as (ending, exit code, detail)."""
        instance = ComponentInstance()
        error = _lib.wasmtime_component_linker_instantiate(
            self._linker_ptr, ctx, module._component_ptr, byref(instance)
        )
        if error:
            outcome = _outcome(run, error, None)
            if outcome is None:
                message = capi.take_message(lib.wasmtime_error_message, error)
                lib.wasmtime_error_delete(error)
                raise EngineError(f"{module.path}: cannot instantiate: {_one_line(message)}")
            return outcome
        func = ComponentFunc()
        if not _lib.wasmtime_component_instance_get_func(
            byref(instance), ctx, module._run_ptr, byref(func)
        ):
            raise EngineError(f"{module.path}: {module.command} has no function 'run'")
        result = ComponentVal()
        error = _lib.wasmtime_component_func_call(byref(func), ctx, None, 0, byref(result), 1)
        if error:
            outcome = _outcome(run, error, None)
            if outcome is None:
                message = capi.take_message(lib.wasmtime_error_message, error)
                lib.wasmtime_error_delete(error)
                outcome = (Ending.TRAPPED, 0, _one_line(message))
            return outcome
        try:
            failed = int(result.kind) == _RESULT and not result.of.result.is_ok
        finally:
            _lib.wasmtime_component_val_delete(byref(result))
        if run.stopped is not None:  # stopped, but the guest returned before noticing
            return run.stopped, 0, run.detail
        if failed:
            return Ending.EXITED, 1, f"{module.command} returned an error (exit code 1)"
        return Ending.RETURNED, 0, ""


def configure_pooling(pool: int) -> None:
    """Let the pooling allocator hold components too (called with the engine's config).

    A component is several core instances (a CPython component: about a dozen) with
    their memories and tables; CPython's function table is larger than the default
    limit of 20,000 elements. The slots only reserve address space.
    """
    _lib.wasmtime_pooling_allocation_config_total_component_instances_set(pool, 64)
    _lib.wasmtime_pooling_allocation_config_max_core_instances_per_component_set(pool, 64)
    _lib.wasmtime_pooling_allocation_config_max_memories_per_component_set(pool, 16)
    _lib.wasmtime_pooling_allocation_config_max_tables_per_component_set(pool, 16)
    _lib.wasmtime_pooling_allocation_config_max_component_instance_size_set(pool, 1 << 20)
    _lib.wasmtime_pooling_allocation_config_max_core_instance_size_set(pool, 1 << 20)
    _lib.wasmtime_pooling_allocation_config_table_elements_set(pool, 100_000)
