"""Assembling a worker: everything a process needs to serve, built once, then only used.

:func:`build_worker` turns the settings and the configuration into a :class:`Worker`: it
chooses and creates the engine, compiles every module into the routing table
(:mod:`wagi.execution.handlers`), plans the kernel wall (:mod:`wagi.execution.wall`) and
places the runs behind it (:class:`~wagi.execution.sites.RunSites`), and wires the
observer, the module log, the health checks and, for an engine that cannot interrupt a
module, the 504 watchdog. The WSGI app (:class:`~wagi.server.gateway.Gateway`), ``wagi
check`` and ``wagi run`` all start from it::

    worker = build_worker(settings, config, serving=True)   # a gunicorn worker
    app = Gateway(worker)                                    # serves, builds nothing

Any problem is a :class:`~wagi.execution.handlers.StartupError` naming file, route and key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wagi.config import Config
from wagi.config.settings import ServerSettings
from wagi.engines import create_engine
from wagi.engines.base import Engine
from wagi.execution import landlock, scratch, wall
from wagi.execution.engine_choice import EngineChoice, choose_engine
from wagi.execution.handlers import Handler, StartupError, build_routing_table
from wagi.execution.loader import ModuleLoader
from wagi.execution.sites import RunSites, broken_engine
from wagi.observability.module_log import ModuleLog
from wagi.observability.observe import Observer
from wagi.routing import RoutingTable
from wagi.server.answers import TIMED_OUT
from wagi.server.health import WorkerHealth
from wagi.server.watchdog import Watchdog


@dataclass(frozen=True)
class Worker:
    """One worker's parts, complete: what serving a request looks things up in."""

    settings: ServerSettings
    engine: Engine
    loader: ModuleLoader
    """Compiled modules by source; reloads a module file that changed."""
    table: RoutingTable[Handler]
    sites: RunSites
    """Where runs happen, behind the wall planned for this worker (``sites.plan``)."""
    observer: Observer
    module_log: ModuleLog
    health: WorkerHealth
    watchdog: Watchdog | None
    """The 504 watchdog, for an engine that cannot interrupt a module in a server."""
    transient: str
    """The worker's folder of transient files (scratch directories, spooled bodies): the
    one the wall grants, as a ``str`` (no path object made per request)."""


def build_worker(
    settings: ServerSettings,
    config: Config,
    choice: EngineChoice | None = None,
    *,
    serving: bool = False,
    confine: bool | None = None,
    secrets: Sequence[Path] = (),
) -> Worker:
    """Everything a worker needs to serve: engine, compiled modules, routing table.

    ``serving`` (a gunicorn worker) also starts the 504 watchdog when the engine
    cannot interrupt a module, before the engine exists (nothing is spawned from a
    process that has already compiled), and, when the engine runs modules behind one
    wall for the whole worker, raises that wall around the calling thread and every
    thread it makes from then on: the worker serves and runs modules confined.
    ``confine`` (default: ``serving``) raises that wall without serving (``wagi run``:
    the process does nothing else afterwards). ``secrets`` are files the worker's wall
    must never grant (TLS keys).
    """
    if choice is None:
        choice = choose_engine(settings.engine, config, settings.max_memory, settings.kernel_wall)
    metrics = None
    if serving and settings.metrics_bind:
        from wagi.observability.metrics import Metrics  # prometheus_client only where on

        metrics = Metrics()
    watchdog = None
    if serving and not choice.capabilities.interruptible:
        watchdog = Watchdog(TIMED_OUT.http_bytes(), choice.name)
    engine = create_engine(
        choice.name, settings.cache_dir, metrics.cache_lookup if metrics else None
    )
    loader = ModuleLoader(engine)
    try:  # remove what killed workers left behind before serving
        transient = scratch.worker_folder()
    except (scratch.ScratchError, OSError) as exc:
        raise StartupError(f"the folder of transient files (scratch, bodies): {exc}") from None
    try:
        plan = wall.plan_walls(
            engine.capabilities,
            config,
            settings.kernel_wall,
            settings.cache_dir,
            transient,
            worker=wall.WorkerNeeds.of(settings, config, secrets),
        )
    except wall.WallRefused as exc:
        raise StartupError(str(exc)) from None
    sites = RunSites(engine, plan, settings.cache_dir, announce=serving)
    table = build_routing_table(
        config, engine, loader, settings, tolerant=serving, run=sites.run_module
    )
    observer = Observer(
        engine.name,
        trust_request_id=settings.trusted_proxy_hops > 0,
        echo_request_id=serving,
        metrics=metrics,
    )
    module_log = ModuleLog(settings.log_dir, json=settings.log_format == "json")
    # A worker that can no longer run modules is replaced (wagi.server.health).
    health = WorkerHealth(replace=serving)
    health.watch(lambda: broken_engine(engine.broken))
    if watchdog is not None:
        health.watch(watchdog.problem)
    # Spooled bodies and scratch directories go there, and the wall grants that very
    # directory: one made again would be out of reach of the confined worker.
    transient_path = str(transient)
    health.watch(lambda: scratch.folder_problem(transient_path))
    if (serving if confine is None else confine) and plan.worker is not None:
        try:
            sites.confine_this_thread()
        except landlock.WallError as exc:
            raise StartupError(f"the worker could not be confined: {exc}") from None
        engine.seal_cache()
        module_log.confined = True
    return Worker(
        settings=settings,
        engine=engine,
        loader=loader,
        table=table,
        sites=sites,
        observer=observer,
        module_log=module_log,
        health=health,
        watchdog=watchdog,
        transient=transient_path,
    )
