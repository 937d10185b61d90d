"""Volumes for an engine that cannot confine a module: a kernel-confined thread per route.

wasmer's WASI layer lets a module leave its mapped directories (absolute paths,
symlinks). Where Linux Landlock is available, wagi still serves volumes with it:
each such ``[[module]]`` runs on threads of its own that the kernel confines to
that route's volumes and nothing else (not wagi's files, not the artifact cache,
not another route's volumes), whatever the engine's WASI layer does.

A confined thread is set up once: it creates its own engine (wasmer-python's
objects belong to the thread that made them), loads and prepares the route's
module while it may still read the cache, then confines itself for good. A
module file replaced on disk gets a fresh thread, set up the same way::

    routes = ConfinedRoutes("wasmer", cache_dir)
    result = routes.run(handler, module, invocation)   # on the route's confined thread
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wagi import landlock
from wagi.engines import engine_class
from wagi.engines.base import Engine, Invocation, LoadedModule, Preopen, RunResult
from wagi.engines.cache import ArtifactCache
from wagi.runner import RunnerPool

logger = logging.getLogger("wagi")


def wall_rules(preopens: Sequence[Preopen]) -> list[landlock.PathRule]:
    """What a route's confined thread may reach: its volumes, each with its own access."""
    return [landlock.PathRule(p.host_path, writable=not p.read_only) for p in preopens]


class _Route:
    """One ``[[module]]``'s confined threads, for one version of its module file."""

    def __init__(
        self,
        engine_name: str,
        cache_dir: Path | None,
        source: LoadedModule,
        preopens: Sequence[Preopen],
        limits: Any,
        deny_network: bool,
        label: str,
    ) -> None:
        self.source = source
        """The serving thread's copy of the module: a new one means the file changed."""
        self._state = threading.local()
        rules = wall_rules(preopens)

        def set_up() -> None:
            # wasmer's objects must be made on the thread that uses them, and before the
            # wall goes up: afterwards the cache and the module file are out of reach.
            engine: Engine = engine_class(engine_name)(  # type: ignore[call-arg]
                cache=ArtifactCache(cache_dir), unconfined_volumes=True
            )
            module = engine.load(source.path)
            engine.prepare(module, limits)
            report = landlock.restrict_current_thread(rules, deny_network=deny_network)
            self._state.engine, self._state.module = engine, module
            logger.info("%s: a confined thread is up: %s", label, report.describe())

        self.pool = RunnerPool(f"wagi-confined {label}", on_start=set_up)

    def run(self, invocation: Invocation) -> RunResult:
        """On the confined thread: run this thread's copy of the module."""
        engine: Engine = self._state.engine
        return engine.run(self._state.module, invocation)


class ConfinedRoutes:
    """The confined threads of every route that needs them, made on first use."""

    def __init__(self, engine_name: str, cache_dir: Path | None) -> None:
        self.engine_name = engine_name
        self.cache_dir = cache_dir
        self._routes: dict[int, _Route] = {}

    def run(self, handler: Any, module: LoadedModule, invocation: Invocation) -> RunResult:
        """Run ``handler``'s module on one of its confined threads and wait for the result.

        ``module`` is the serving thread's copy, used only to notice a replaced file.
        """
        key = handler.entry.index
        route = self._routes.get(key)
        if route is None or route.source is not module:
            if route is not None:
                route.pool.close()
            route = self._routes[key] = _Route(
                self.engine_name,
                self.cache_dir,
                module,
                handler.preopens,
                handler.limits,
                deny_network=not handler.entry.allowed_hosts,
                label=handler.entry.label,
            )
        return route.pool.submit(functools.partial(route.run, invocation)).result()
