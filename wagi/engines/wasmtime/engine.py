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

Where the pieces live: the per-run state in :mod:`.run`, the host functions and the
forwarder in :mod:`.shims`, the ticker in :mod:`.ticker`, the WASI context in
:mod:`.wasi`, the C API in :mod:`.capi`; this module holds the engine and its modules.

Importing this module loads the wasmtime library but creates no engine, so it
is safe in the gunicorn master. :class:`WasmtimeEngine` must be built in a
worker.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import threading
import time
from ctypes import byref, c_void_p
from pathlib import Path

import wasmtime

from wagi.engines.base import (
    Capabilities,
    Ending,
    Engine,
    EngineError,
    Invocation,
    Limits,
    LoadedModule,
    RunResult,
    is_component,
    read_module,
)
from wagi.engines.cache import ArtifactCache, content_hash
from wagi.engines.wasmtime import capi
from wagi.engines.wasmtime.component import ComponentModule, ComponentRunner, configure_pooling
from wagi.engines.wasmtime.run import _one_line, _outcome, _Run, _Stop
from wagi.engines.wasmtime.shims import (
    _FORWARDED,
    _FORWARDER_WAT,
    _WASI,
    _deadline_callback,
    _host_function,
    _host_functions,
)
from wagi.engines.wasmtime.ticker import _DEFAULT_TICK, _EpochTicker
from wagi.engines.wasmtime.wasi import _configure_wasi

__all__ = ["WasmtimeEngine", "WasmtimeModule"]

capi.check()
lib = capi.lib

_NO_DEADLINE = 1 << 62
"""Epoch deadline for untimed runs (a store's deadline starts at 0, which would trap)."""

_POOL_SLOTS = 256
"""Instances (and memories, tables, stacks) the pooling allocator keeps per engine.
A worker runs one or a few modules at a time; the slots only reserve address space."""


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
        self.entrypoints = frozenset(name for name, ty in functions.items() if not ty.params)
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
        super().__init__(cache)
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
        self.check_entrypoint(module, entrypoint)

        limits = invocation.limits
        store = lib.wasmtime_store_new(self._engine_ptr, None, capi.NO_FINALIZER)
        ctx = lib.wasmtime_store_context(store)
        timed = False
        try:
            clock_origin_ns = time.monotonic_ns()
            _configure_wasi(ctx, module.path, invocation)
            if limits.max_memory is not None:
                lib.wasmtime_store_limiter(store, limits.max_memory, -1, -1, -1, -1)
            deadline = limits.deadline()
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
        return run.result(ending, exit_code, detail)

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
        if entrypoint != "_start" and "_initialize" in module.entrypoints:
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
