"""What each route runs, worked out once per worker at start-up.

Configuration in, routing table out: every ``[[module]]`` becomes a
:class:`Handler` with its environment, volumes and limits fixed, every module
is compiled (and its limits prepared) once, and a module that exports
``_routes`` is asked for its sub-routes. Any problem is a :class:`StartupError`
naming the file, the route and the key. Serving then only looks things up.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from wagi.cgi.request import ArgvTemplate
from wagi.config import (
    DEFAULT_ENTRYPOINT,
    Config,
    ConfigError,
    ModuleEntry,
    Scratch,
    load_env_file,
)
from wagi.config.settings import ServerSettings
from wagi.engines.base import (
    Engine,
    EngineError,
    Invocation,
    Limits,
    LoadedModule,
    Preopen,
    RunResult,
    StdoutSink,
)
from wagi.execution.loader import ModuleLoader
from wagi.execution.scratch import ScratchError
from wagi.execution.sites import WorkerUnfit
from wagi.outbound.policy import OutboundPolicy
from wagi.routing import Route, RoutingTable, join_subroute

logger = logging.getLogger("wagi")

ROUTES_EXPORT = "_routes"


class StartupError(Exception):
    """The server cannot start; the message says which file, route and key."""


@dataclass(frozen=True)
class Handler:
    """What a route runs: a module's export, with everything fixed at start-up.

    A request fills in only what varies: :meth:`invocation` puts its argv, CGI variables
    and body beside what is fixed here.
    """

    entry: ModuleEntry
    entrypoint: str
    environment: Mapping[str, str]
    """Global variables, then the module's own; the CGI variables go on top per request."""
    preopens: tuple[Preopen, ...]
    limits: Limits
    outbound: OutboundPolicy
    scratch: Scratch | None
    """A private directory per request (``tmp``), made by :func:`wagi.execution.scratch.provide`."""

    @property
    def argv(self) -> ArgvTemplate:
        """How a request's argv is built (``argv`` in modules.toml)."""
        return self.entry.argv

    def invocation(
        self,
        argv: list[str],
        cgi_env: Mapping[str, str],
        stdin: bytes,
        stdin_file: str | None = None,
        stdout: StdoutSink | None = None,
    ) -> Invocation:
        """One run of this handler: the request's part beside the route's fixed part."""
        env = self.environment
        return Invocation(
            self.entrypoint,
            argv,
            {**env, **cgi_env} if env else cgi_env,
            stdin,
            stdin_file,
            self.preopens,
            self.limits,
            stdout,
            self.outbound,
        )


def global_environment(settings: ServerSettings) -> dict[str, str]:
    """``--env-file`` first, then ``--env`` (which wins)."""
    env: dict[str, str] = {}
    if settings.env_file is not None:
        env.update(load_env_file(settings.env_file))
    env.update(settings.env)
    return env


def make_handler(
    entry: ModuleEntry, entrypoint: str, global_env: Mapping[str, str], settings: ServerSettings
) -> Handler:
    return Handler(
        entry=entry,
        entrypoint=entrypoint,
        environment={**global_env, **dict(entry.environment)},
        preopens=tuple(Preopen(v.guest_path, v.host_path, v.read_only) for v in entry.volumes),
        limits=Limits(
            timeout=entry.timeout or settings.timeout,
            max_memory=entry.max_memory or settings.max_memory,
            max_output=settings.max_response,
        ),
        outbound=OutboundPolicy(
            allowed=entry.allowed_hosts,
            max_concurrency=entry.http_max_concurrency,
            max_header_bytes=settings.outbound_max_headers,
            max_body_bytes=settings.outbound_max_body,
        ),
        scratch=entry.tmp,
    )


def parse_routes_output(
    entry: ModuleEntry, output: bytes, exports: Iterable[str]
) -> list[tuple[str, str]]:
    """``_routes`` prints ``<pattern> <export>`` lines; return (full route, export) pairs."""
    where = f"{entry.module}: _routes of {entry.label}"
    known = set(exports)
    pairs = []
    for number, raw in enumerate(output.decode("utf-8", "replace").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise StartupError(f"{where}, line {number}: expected '<route> <export>', got {raw!r}")
        pattern, export = parts
        try:
            route = join_subroute(entry.route, pattern)
        except ValueError as exc:
            raise StartupError(f"{where}, line {number}: {exc}") from None
        if export not in known:
            raise StartupError(
                f"{where}, line {number}: the module has no exported function {export!r}"
            )
        pairs.append((route, export))
    return pairs


def build_routing_table(
    config: Config,
    engine: Engine,
    loader: ModuleLoader,
    settings: ServerSettings,
    *,
    tolerant: bool = False,
    run: Callable[[Handler, LoadedModule, Invocation], RunResult],
) -> RoutingTable[Handler]:
    """Compile every module and collect every route, including ``_routes`` sub-routes.

    ``tolerant`` (a serving worker, whose configuration ``wagi check`` already passed):
    a module file that no longer loads (replaced or broken since) is logged and its route
    kept, answering 500 until the file is fixed, instead of stopping the worker, which
    would make gunicorn stop the whole server. Its ``_routes`` sub-routes wait for a restart.

    ``run`` runs ``_routes`` where the route's requests will run (behind the same kernel
    wall, with the same scratch directory: :meth:`wagi.execution.sites.RunSites.run_module`).
    """
    try:
        global_env = global_environment(settings)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    routes: list[Route[Handler]] = []
    for entry in config.modules:
        where = f"{config.path}: {entry.label}"
        try:
            module = loader.get(entry.module)
        except (EngineError, OSError) as exc:
            problem = f"{where}, key 'module': cannot load {entry.module}: {exc}"
            if not tolerant:
                raise StartupError(problem) from None
            logger.error("%s; the route answers 500 until the file is fixed", problem)
            parent = make_handler(entry, entry.entrypoint, global_env, settings)
            routes.append(Route(entry.route, parent, (entry.index, 0), entry.host))
            continue
        if module.kind == "component":
            _check_component(where, entry, module)
        if entry.entrypoint not in module.exports:
            raise StartupError(
                f"{where}, key 'entrypoint': the module exports no function "
                f"{entry.entrypoint!r} (it exports: {', '.join(sorted(module.exports)) or 'none'})"
            )
        parent = make_handler(entry, entry.entrypoint, global_env, settings)
        try:
            engine.prepare(module, parent.limits)
        except EngineError as exc:
            raise StartupError(f"{where}: {exc}") from None
        routes.append(Route(entry.route, parent, (entry.index, 0), entry.host))
        if ROUTES_EXPORT not in module.exports:
            continue
        listing = dataclasses.replace(parent, entrypoint=ROUTES_EXPORT)
        try:
            result = run(listing, module, listing.invocation([entry.route], {}, b""))
        except (EngineError, ScratchError, WorkerUnfit) as exc:
            raise StartupError(f"{where}: running _routes failed: {exc}") from None
        if not result.succeeded:
            raise StartupError(f"{where}: _routes {result.ending.value}: {result.detail}")
        pairs = parse_routes_output(entry, result.stdout, module.exports)
        for number, (pattern, export) in enumerate(pairs, start=1):
            handler = make_handler(entry, export, global_env, settings)
            # A sub-route answers the host its parent answers.
            routes.append(Route(pattern, handler, (entry.index, number), entry.host))
    return RoutingTable(routes)


def _check_component(where: str, entry: ModuleEntry, module: LoadedModule) -> None:
    """What a component cannot be given, by key (the engine's prepare checks its imports)."""
    if entry.entrypoint != DEFAULT_ENTRYPOINT:
        raise StartupError(
            f"{where}, key 'entrypoint': {entry.module} is a {module.describe()}; a "
            "component runs as a whole, 'entrypoint' (like _routes) belongs to core modules"
        )
    if entry.tmp is not None:
        raise StartupError(
            f"{where}, key 'tmp': {entry.module} is a {module.describe()}; wagi cannot bound "
            "what a component writes to files (no engine offers a hook on WASI 0.2's file "
            "streams), so a component gets no scratch directory"
        )
