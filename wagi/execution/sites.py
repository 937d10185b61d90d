"""Run sites: where a worker's module runs happen, behind the wall that :mod:`~wagi.execution.wall`
plans.

- An engine with a wall for the whole worker (wasmtime) runs modules on the
  thread that serves the request, once a serving worker has confined itself
  (:meth:`RunSites.confine_this_thread`, the last step of building it): every
  thread it makes from then on, the engine's WASI helpers included, inherits the
  wall. A process that stays unconfined (``wagi run``, ``wagi check``, start-up
  ``_routes``) runs them on runner threads (:mod:`wagi.execution.runners`), one pool per
  ``[[module]]``, each confined to the same wall before its first run.
- An engine that does not confine volumes itself (wasmer) runs each route with
  volumes on threads of its own, confined to that route's wall. Such a thread
  is set up once: it creates its own engine (wasmer-python's objects belong to
  the thread that made them), loads and prepares the route's module while it
  may still read the cache, then confines itself for good. A module file
  replaced on disk gets a fresh thread, set up the same way. Its other routes
  run on the serving thread, as before.

Start-up runs (``_routes``) go through the same places as requests::

    sites = RunSites(engine, plan, cache_dir)
    result = sites.run_module(handler, module, invocation)  # and wait for it

:meth:`RunSites.run_module` is the one way a module runs in a worker: it gives the run its
scratch directory (:mod:`wagi.execution.scratch`) and turns what makes a worker unable to
run modules (a thread the wall could not confine, a broken engine) into
:class:`WorkerUnfit`, so the layer above knows neither Landlock nor scratch folders.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from wagi.engines import engine_class
from wagi.engines.base import (
    Engine,
    EngineBroken,
    EngineError,
    Invocation,
    Limits,
    LoadedModule,
    RunResult,
)
from wagi.engines.cache import ArtifactCache
from wagi.execution import landlock, scratch
from wagi.execution.runners import RunnerPool
from wagi.execution.wall import Wall, WallPlan

if TYPE_CHECKING:
    from wagi.execution.handlers import Handler

logger = logging.getLogger("wagi")


class WorkerUnfit(Exception):
    """This worker can no longer run modules (a thread that runs them could not be
    confined, or its engine broke); the message says why. The worker must be replaced."""


def broken_engine(why: str) -> str:
    """The problem of a worker whose engine says it is broken (``why``), or ``""``."""
    return f"its engine is broken ({why})" if why else ""


class _Route:
    """One ``[[module]]``'s confined threads, for one version of its module file."""

    def __init__(
        self,
        engine_name: str,
        cache_dir: Path | None,
        source: LoadedModule,
        limits: Limits,
        wall: Wall,
        label: str,
        log_level: int,
    ) -> None:
        self.source = source
        """The serving thread's copy of the module: a new one means the file changed."""
        self.refused: LoadedModule | None = None
        """A newer version whose threads could not be set up: not tried again."""
        self._state = threading.local()

        def set_up() -> None:
            # wasmer's objects must be made on the thread that uses them, and before the
            # wall goes up: afterwards the cache and the module file are out of reach.
            engine: Engine = engine_class(engine_name)(  # type: ignore[call-arg]
                cache=ArtifactCache(cache_dir), unconfined_volumes=True
            )
            # The very version the serving thread checked, not the file, which may have
            # changed since (to a version that does not load: docs/reliability.md).
            load_same = getattr(engine, "load_same", None)
            module = load_same(source) if load_same is not None else engine.load(source.path)
            engine.prepare(module, limits)
            report = wall.raise_here()
            self._state.engine, self._state.module = engine, module
            logger.log(log_level, "%s: a confined thread is up: %s", label, report.describe())

        self.pool = RunnerPool(f"wagi-confined {label}", on_start=set_up)

    def run_here(self, invocation: Invocation) -> RunResult:
        """On the confined thread: run this thread's copy of the module."""
        engine: Engine = self._state.engine
        return engine.run(self._state.module, invocation)


class ConfinedRoutes:
    """The confined threads of the routes that have a wall of their own, made on first use."""

    def __init__(
        self,
        engine_name: str,
        cache_dir: Path | None,
        walls: Mapping[int, Wall],
        log_level: int = logging.INFO,
    ) -> None:
        self.engine_name = engine_name
        self.cache_dir = cache_dir
        self.walls = walls
        self.log_level = log_level
        self._routes: dict[int, _Route] = {}

    def run_on_route_thread(
        self, handler: Handler, module: LoadedModule, invocation: Invocation
    ) -> RunResult:
        """Run ``handler``'s module on one of its confined threads and wait for the result.

        ``module`` is the serving thread's copy, used only to notice a replaced file.
        """
        key = handler.entry.index
        route = self._routes.get(key)
        if route is None or (route.source is not module and route.refused is not module):
            fresh = _Route(
                self.engine_name,
                self.cache_dir,
                module,
                handler.limits,
                self.walls[key],
                label=handler.entry.label,
                log_level=self.log_level,
            )
            if route is None:
                route = self._routes[key] = fresh
            else:
                # A new version replaces the route's threads only once a thread of its own is
                # up: until then the working threads go on serving the last good version.
                try:
                    job = fresh.pool.submit(functools.partial(fresh.run_here, invocation))
                except EngineError as exc:
                    route.refused = module
                    logger.error(
                        "%s: the new version of %s cannot be set up (%s); still serving the "
                        "last version that could",
                        handler.entry.label,
                        module.path,
                        exc,
                    )
                else:
                    route.pool.close()
                    self._routes[key] = fresh
                    return job.result()
        return route.pool.submit(functools.partial(route.run_here, invocation)).result()


class RunSites:
    """The threads a worker runs modules on, and the wall around them."""

    def __init__(
        self, engine: Engine, plan: WallPlan, cache_dir: Path | None, *, announce: bool = True
    ) -> None:
        """``announce``: log each confined thread at INFO (a server), else at DEBUG."""
        self.engine = engine
        self.plan = plan
        self.confined_here: threading.Thread | None = None
        """The serving thread, once the worker confined itself around it."""
        self.pools: dict[int, RunnerPool] = {}
        self.log_level = logging.INFO if announce else logging.DEBUG
        self.confined = (
            ConfinedRoutes(engine.name, cache_dir, plan.routes, self.log_level)
            if plan.routes
            else None
        )

    def confine_this_thread(self) -> landlock.Report:
        """Raise the worker's wall around the calling thread (and every thread it makes
        from now on), for good: from then on modules run on it. Raises
        :class:`~wagi.execution.landlock.WallError`, confining nothing, if it cannot."""
        assert self.plan.worker is not None
        report = self.plan.worker.raise_here()
        self.confined_here = threading.current_thread()
        logger.log(self.log_level, "this worker is confined: %s", report.describe())
        return report

    def runs_here(self, handler: Handler) -> bool:
        """Whether ``handler``'s runs may happen on the calling thread."""
        if handler.entry.index in self.plan.routes:
            return False  # a route with a wall of its own runs on its own threads
        if self.plan.worker is None:
            return True  # no wall at all, or the engine confines volumes itself
        # Once the worker confined itself, every thread that serves a request is confined:
        # gunicorn makes its threads (gthread) after post_worker_init, from the main thread.
        return self.confined_here is not None

    def _confine_runner(self) -> None:
        assert self.plan.worker is not None
        report = self.plan.worker.raise_here()
        logger.log(self.log_level, "a confined thread is up: %s", report.describe())

    def pool_for(self, handler: Handler) -> RunnerPool:
        """The runner threads of ``handler``'s ``[[module]]`` (its sub-routes share them)."""
        pool = self.pools.get(handler.entry.index)
        if pool is None:
            on_start = self._confine_runner if self.plan.worker is not None else None
            pool = RunnerPool(f"wagi-run {handler.entry.route}", on_start=on_start)
            self.pools[handler.entry.index] = pool
        return pool

    def run_module(
        self, handler: Handler, module: LoadedModule, invocation: Invocation
    ) -> RunResult:
        """Run ``module`` where ``handler``'s runs belong, with its scratch directory if the
        route has one, and wait for the result.

        Raises :class:`WorkerUnfit` when this worker turns out unable to run modules (a new
        thread could not be confined, or the engine broke); ``EngineError`` or ``OSError``
        (say, a scratch directory) when this run cannot start.
        """
        try:
            if handler.scratch is None:
                return self._run_where_it_belongs(handler, module, invocation)
            with scratch.provide(invocation, handler.scratch) as provided:
                return self._run_where_it_belongs(handler, module, provided)
        except EngineBroken as exc:
            raise WorkerUnfit(broken_engine(str(exc))) from None
        except landlock.WallError as exc:
            # No module runs unconfined: this worker is replaced.
            raise WorkerUnfit(f"a thread that runs modules could not be confined ({exc})") from None

    def _run_where_it_belongs(
        self, handler: Handler, module: LoadedModule, invocation: Invocation
    ) -> RunResult:
        if self.confined is not None and handler.entry.index in self.plan.routes:
            return self.confined.run_on_route_thread(handler, module, invocation)
        if self.runs_here(handler):
            return self.engine.run(module, invocation)
        if self.engine.capabilities.streaming:
            job = self.pool_for(handler).submit(
                functools.partial(self.engine.run, module, invocation)
            )
            return job.result()
        return self.engine.run(module, invocation)
