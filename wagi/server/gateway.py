"""The WSGI application: a request in, a module run, a response out.

:meth:`Gateway.create` does what can be done once per worker: choose and
create the engine, build the routing table (:mod:`wagi.execution.handlers`), plan the
kernel wall (:mod:`wagi.execution.wall`) and, in a serving worker whose engine shares
its I/O threads (wasmtime), raise it around the whole worker. Serving a
request only looks things up::

    raw path -> routing table -> CGI request -> engine run -> CGI response -> WSGI response

Where a module runs:

- **on the serving thread** (wasmtime in a confined worker, or without a wall):
  the module's stdout goes to a :class:`~wagi.server.streaming.ClientStream`, which
  answers small, quick responses whole (with a Content-Length) and streams the
  others through WSGI ``write`` as the module writes them;
- **on a route's own confined thread** (wasmer, routes with volumes:
  :mod:`wagi.execution.sites`), or on a confined runner thread when this process must
  stay unconfined (``wagi run``): the output is answered when the run ends.

An engine that cannot be *interrupted* gets a :class:`~wagi.server.watchdog.Watchdog`
that answers 504 when a module overruns its timeout.

Each request is reported to the worker's :class:`~wagi.observability.observe.Observer` (request
id, route, how the module ended, when it is over); logs and metrics read it there.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request, Response

from wagi.cgi.request import cgi_variables, raw_path_and_query
from wagi.cgi.response import BadCgiResponse, parse_cgi_response
from wagi.config import Config
from wagi.config.settings import ServerSettings
from wagi.engines import create_engine
from wagi.engines.base import (
    Ending,
    Engine,
    EngineBroken,
    EngineError,
    Invocation,
    LoadedModule,
    RunResult,
)
from wagi.execution import landlock, scratch, wall
from wagi.execution.engine_choice import EngineChoice, choose_engine
from wagi.execution.handlers import Handler, StartupError, build_routing_table
from wagi.execution.loader import ModuleLoader
from wagi.execution.sites import RunSites
from wagi.observability.module_log import ModuleLog
from wagi.observability.observe import Observation, Observer
from wagi.observability.observe import current as current_observation
from wagi.routing import RoutingTable, request_host
from wagi.server.health import Unfit, WorkerHealth
from wagi.server.streaming import ClientStream, status_line
from wagi.server.watchdog import Watchdog, WatchdogGone

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    WsgiResponse = WSGIApplication
    """What :meth:`Gateway.respond` returns: a werkzeug Response or a streamed body."""

logger = logging.getLogger("wagi")

HEALTH_PATH = "/healthz"
TIMEOUT_MESSAGE = "the module timed out"
UNFIT_MESSAGE = "this worker can no longer run modules and is being replaced; try again"


class CgiHttpResponse(Response):
    # A module that sends only ``Status: 204`` gets no invented Content-Type.
    default_mimetype = None


class Answer:
    """A complete response, made once and served many times: a WSGI application.

    Cheaper than a werkzeug ``Response`` per request (the status line and header list
    are ready), and what every error and every small module answer is.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = [*headers, ("Content-Length", str(len(body)))]
        self.body = body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response(self.status, list(self.headers))
        return [self.body]

    def http_bytes(self) -> bytes:
        """As HTTP/1.1 bytes on the wire, ending the connection (for the watchdog)."""
        head = [f"HTTP/1.1 {self.status}", *(f"{k}: {v}" for k, v in self.headers)]
        head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


def error_response(status: int, message: str = "") -> Answer:
    """A short plain-text error: what went wrong, never the internals (those go to the log)."""
    text = status_line(status) + (f": {message}" if message else "") + "\n"
    return Answer(
        status_line(status), [("Content-Type", "text/plain; charset=utf-8")], text.encode()
    )


def http_bytes(response: Answer) -> bytes:
    """``response`` as HTTP/1.1 bytes on the wire, ending the connection (for the watchdog)."""
    return response.http_bytes()


OK = Answer("200 OK", [("Content-Type", "text/plain; charset=utf-8")], b"OK")
NOT_FOUND = error_response(404)
NUL_IN_PATH = error_response(400, "the path holds a NUL byte (%00)")
UNREADABLE_BODY = error_response(400, "the request body could not be read")
NOT_LOADED = error_response(500, "the module could not be loaded")
NOT_STARTED = error_response(500, "the module could not be started")
NOT_CGI = error_response(500, "the module's response was not valid CGI")
TOO_LARGE = error_response(500, "the module's response was too large")
FAILED = error_response(500, "the module failed")
TIMED_OUT = error_response(504, TIMEOUT_MESSAGE)
UNFIT = error_response(503, UNFIT_MESSAGE)


def broken_engine(why: str) -> str:
    return f"its engine is broken ({why})" if why else ""


SPOOL_ABOVE = 1024 * 1024
"""Request bodies larger than this (or chunked ones that grow past it) go to an unlinked
temporary file that the module gets as its stdin file: never held whole in memory."""


class Body:
    """A request body: small ones as bytes, large ones spooled to an unlinked file."""

    __slots__ = ("data", "length", "spool")

    def __init__(self, data: bytes, spool: IO[bytes] | None = None, length: int = 0) -> None:
        self.data = data
        self.spool = spool
        self.length = length if spool is not None else len(data)

    @property
    def path(self) -> str | None:
        """A path the engine can open, for a spooled body."""
        return f"/proc/self/fd/{self.spool.fileno()}" if self.spool is not None else None

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EMPTY_BODY = Body(b"")


def has_body(environ: WSGIEnvironment) -> bool:
    """Whether the request announces a body (a length other than 0, or chunks)."""
    length = environ.get("CONTENT_LENGTH")
    return bool(length and length != "0") or "HTTP_TRANSFER_ENCODING" in environ


def read_body(request: Request, limit: int) -> Body:
    """The request body, at most ``limit`` bytes; larger bodies raise RequestEntityTooLarge."""
    request.max_content_length = limit
    declared = request.content_length
    if declared is not None and declared <= SPOOL_ABOVE:
        return Body(request.get_data(cache=False))
    stream = request.stream
    # Never ask werkzeug's stream for more than the limit: past it, it answers 413 even when
    # the body ends exactly there; _refuse_a_longer_chunked_body looks past it itself.
    head = stream.read(min(SPOOL_ABOVE + 1, limit))
    if len(head) <= SPOOL_ABOVE and declared is None:
        _refuse_a_longer_chunked_body(request, len(head), limit)
        return Body(head)
    # Unlinked, gone when closed; it outlives this function: the run reads it, then closes it.
    # In the worker's folder, which the kernel wall (wagi.execution.wall) lets runner threads read.
    spool = tempfile.TemporaryFile(prefix="wagi-body-", dir=scratch.worker_folder())  # noqa: SIM115
    try:
        spool.write(head)
        length = len(head)
        while length < limit and (chunk := stream.read(min(256 * 1024, limit - length))):
            spool.write(chunk)
            length += len(chunk)
        _refuse_a_longer_chunked_body(request, length, limit)
        spool.flush()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return Body(b"", spool, length)


def _refuse_a_longer_chunked_body(request: Request, length: int, limit: int) -> None:
    # werkzeug stops a chunked body quietly at the limit; see if there was more.
    if request.content_length is None and length == limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


class ResponseCut(Exception):
    """A module failed after bytes of its response were sent: the response is cut short
    (gunicorn closes the connection), so the client sees a truncated body, never a clean
    end. Raised from the body of a response served without a client socket (``wagi run``)."""


class Gateway:
    """The WSGI application of one worker."""

    def __init__(
        self,
        settings: ServerSettings,
        engine: Engine,
        loader: ModuleLoader,
        table: RoutingTable[Handler],
        module_log: ModuleLog,
        sites: RunSites,
        observer: Observer | None = None,
        *,
        watchdog: Watchdog | None = None,
        health: WorkerHealth | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.loader = loader
        self.table = table
        self.module_log = module_log
        self.observer = observer or Observer(engine.name)
        self.watchdog = watchdog
        self.health = health or WorkerHealth(replace=False)
        self.sites = sites
        """Where module runs happen, behind the kernel wall (wagi.execution.sites)."""
        self.streams = engine.capabilities.streaming
        self._checks: dict[int, Callable[[LoadedModule], None]] = {}
        self.wsgi_app: Any = self.app
        if settings.trusted_proxy_hops:
            hops = settings.trusted_proxy_hops
            self.wsgi_app = ProxyFix(self.app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)

    @classmethod
    def create(
        cls,
        settings: ServerSettings,
        config: Config,
        choice: EngineChoice | None = None,
        *,
        serving: bool = False,
        confine: bool | None = None,
        secrets: Sequence[Path] = (),
    ) -> Gateway:
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
            choice = choose_engine(
                settings.engine, config, settings.max_memory, settings.kernel_wall
            )
        metrics = None
        if serving and settings.metrics_bind:
            from wagi.observability.metrics import (
                Metrics,  # prometheus_client only where metrics are on
            )

            metrics = Metrics()
        watchdog = None
        if serving and not choice.capabilities.interruptible:
            watchdog = Watchdog(http_bytes(TIMED_OUT), choice.name)
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
            config, engine, loader, settings, tolerant=serving, run=sites.run
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
        transient_path = str(transient)  # a str: no path object made on every request
        health.watch(lambda: scratch.folder_problem(transient_path))
        if (serving if confine is None else confine) and plan.worker is not None:
            try:
                sites.confine_this_thread()
            except landlock.WallError as exc:
                raise StartupError(f"the worker could not be confined: {exc}") from None
            engine.seal_cache()
            module_log.confined = True
        return cls(
            settings,
            engine,
            loader,
            table,
            module_log,
            sites,
            observer,
            watchdog=watchdog,
            health=health,
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        observation = self.observer.begin(environ)
        try:
            response = self.respond(environ, observation)
        except BaseException:
            self.observer.end(observation)
            raise
        return self.observer.serve(observation, response, environ, start_response)

    def respond(self, environ: WSGIEnvironment, observation: Observation) -> WsgiResponse:
        """The response to one request, as a WSGI application (a module run starts when it
        is called, so that its output can go straight to the client)."""
        raw_path, query = raw_path_and_query(environ)
        method = environ.get("REQUEST_METHOD", "GET")
        if raw_path == HEALTH_PATH and method in ("GET", "HEAD"):
            observation.route = HEALTH_PATH
            return UNFIT if self.health.problem() else OK
        if "%00" in raw_path or "\0" in raw_path:
            # PATH_INFO would hold a NUL, which no C string (argv, environment) can carry.
            return NUL_IN_PATH
        match = self.table.match(raw_path, request_host(environ, self.settings.default_host))
        if match is None:
            return NOT_FOUND
        if self.health.problem():
            return UNFIT
        body = EMPTY_BODY
        if has_body(environ):
            try:
                body = read_body(Request(environ), self.settings.max_body)
            except RequestEntityTooLarge:
                return error_response(
                    413, f"the body is larger than {self.settings.max_body} bytes"
                )
            except BadRequest:
                return UNREADABLE_BODY
        handler = match.handler
        route = observation.route = match.route.pattern
        cgi_env = cgi_variables(
            environ,
            raw_path=raw_path,
            query=query,
            script_name=match.script_name,
            raw_path_info=match.raw_path_info,
            matched_route=route,
            body_length=body.length,
            default_host=self.settings.default_host,
            request_id=observation.request_id,
        )
        try:
            module = self.loader.get(handler.entry.module, self._check_for(handler))
        except (EngineError, OSError) as exc:
            body.close()
            logger.error("[%s] cannot load %s: %s", route, handler.entry.module, exc)
            return NOT_LOADED
        argv = handler.argv.expand(match.script_name, query)
        if self.streams and self.sites.runs_here(handler):
            return _RunHere(self, handler, module, argv, cgi_env, route, body)
        invocation = handler.invocation(argv, cgi_env, body.data, body.path)
        return self._run_elsewhere(
            handler, module, invocation, route, body, environ, observation.request_id
        )

    # -- running ---------------------------------------------------------------------

    def _run_elsewhere(
        self,
        handler: Handler,
        module: LoadedModule,
        invocation: Invocation,
        route: str,
        body: Body,
        environ: WSGIEnvironment,
        request_id: str,
    ) -> WsgiResponse:
        """Run where this thread waits for the whole result (a confined thread, or here
        on an engine that cannot stream), then answer from it."""
        client = environ.get("gunicorn.socket")
        try:
            with scratch.provide(invocation, handler.scratch) as provided, body:
                run = self.observer.timed(self.run)
                result = run(handler, module, provided, client, route, request_id)
        except Unfit:
            return UNFIT
        except (EngineError, OSError) as exc:
            logger.error("[%s] cannot run %s: %s", route, handler.entry.module, exc)
            return NOT_STARTED
        self.ran(route, result)
        return self.to_response(route, result, result.stdout, handler.limits.timeout)

    def _check_for(self, handler: Handler) -> Callable[[LoadedModule], None]:
        check = self._checks.get(id(handler))
        if check is None:

            def check(module: LoadedModule) -> None:
                self.check(handler, module)

            self._checks[id(handler)] = check
        return check

    def check(self, handler: Handler, module: LoadedModule) -> None:
        """What start-up checked, for a module file loaded again while serving."""
        if handler.entrypoint not in module.exports:
            raise EngineError(
                f"{module.path}: the module exports no function {handler.entrypoint!r}; "
                "it is not served until it does"
            )
        self.engine.prepare(module, handler.limits)

    def ran(self, route: str, result: RunResult) -> None:
        """A module run is over: the observer notes how it ended, its stderr goes to the log."""
        self.observer.ran(result)
        if result.stderr:
            self.module_log.write(route, result.stderr)

    def run(
        self,
        handler: Handler,
        module: Any,
        invocation: Invocation,
        client: Any,
        route: str,
        request_id: str = "",
    ) -> RunResult:
        """Run ``module`` where its route's runs happen, under the watchdog if the engine
        needs one, and wait for the result.

        Raises :class:`~wagi.server.health.Unfit` when this worker turns out unable to run
        modules (the worker is then being replaced).
        """
        watchdog = self.watchdog
        timeout = invocation.limits.timeout
        if watchdog is None or timeout is None or not isinstance(client, socket.socket):
            return self._run_engine(handler, module, invocation)
        try:
            watchdog.arm(client, timeout, route, request_id)
        except WatchdogGone as exc:
            self.health.unfit(str(exc))
            raise Unfit(str(exc)) from None
        try:
            result = self._run_engine(handler, module, invocation)
        finally:
            try:
                watchdog.disarm()
            except WatchdogGone as exc:  # died during the run: this result still stands
                self.health.unfit(str(exc))
        return result

    def _run_engine(self, handler: Handler, module: Any, invocation: Invocation) -> RunResult:
        try:
            return self.sites.run(handler, module, invocation)
        except EngineBroken as exc:
            self.health.unfit(broken_engine(str(exc)))
            raise Unfit(str(exc)) from None
        except landlock.WallError as exc:
            raise Unfit(self.wall_failed(exc)) from None

    def wall_failed(self, exc: landlock.WallError) -> str:
        """No module runs unconfined: this worker is replaced. Returns the problem."""
        problem = f"a thread that runs modules could not be confined ({exc})"
        self.health.unfit(problem)
        logger.error("%s; this worker is being replaced", problem)
        return problem

    def log_ending(self, route: str, result: RunResult, timeout: float | None = None) -> None:
        """One clear line for a run that did not succeed: route, what happened, the limit."""
        ending = result.ending
        if ending is Ending.RETURNED:
            return
        detail = f" ({result.detail})" if result.detail else ""
        if ending is Ending.TIMED_OUT:
            limit = f"its {timeout:g} s timeout" if timeout is not None else "its timeout"
            logger.error("[%s] timed out: the module was stopped at %s%s", route, limit, detail)
        elif ending is Ending.OUTPUT_TOO_LARGE:
            logger.error(
                "[%s] the module wrote more than the %d byte response limit (--max-response)%s",
                route,
                self.settings.max_response,
                detail,
            )
        elif ending is Ending.EXITED:
            logger.error("[%s] exited with code %d", route, result.exit_code)
        elif ending is Ending.CANCELLED:
            logger.info("[%s] the client went away; the module was stopped%s", route, detail)
        else:
            logger.error("[%s] trapped: %s", route, result.detail)

    def to_response(
        self, route: str, result: RunResult, stdout: bytes | bytearray, timeout: float | None = None
    ) -> Answer:
        """The answer to a run that is over and sent nothing yet."""
        ending = result.ending
        if ending is not Ending.RETURNED:
            self.log_ending(route, result, timeout)
            if ending is Ending.TIMED_OUT:
                return TIMED_OUT
            if ending is Ending.OUTPUT_TOO_LARGE:
                return TOO_LARGE
            return FAILED
        try:
            cgi = parse_cgi_response(bytes(stdout))
        except BadCgiResponse as exc:
            logger.error("[%s] invalid CGI response: %s", route, exc)
            return NOT_CGI
        return Answer(status_line(cgi.status, cgi.reason), cgi.headers, cgi.body)


class _RunHere:
    """A run on the serving thread, as a WSGI application: the module's stdout goes to the
    client through a :class:`~wagi.server.streaming.ClientStream` while it runs."""

    __slots__ = ("argv", "body", "cgi_env", "gateway", "handler", "module", "route")

    def __init__(
        self,
        gateway: Gateway,
        handler: Handler,
        module: LoadedModule,
        argv: list[str],
        cgi_env: dict[str, str],
        route: str,
        body: Body,
    ) -> None:
        self.gateway = gateway
        self.handler = handler
        self.module = module
        self.argv = argv
        self.cgi_env = cgi_env
        self.route = route
        self.body = body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        gateway, route, handler = self.gateway, self.route, self.handler
        timeout = handler.limits.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        client = environ.get("gunicorn.socket")
        stream = ClientStream(start_response, client, deadline)  # type: ignore[arg-type]
        observation = current_observation()
        body = self.body
        invocation = handler.invocation(self.argv, self.cgi_env, body.data, body.path, stream)
        started = time.perf_counter()
        try:
            with body:
                if handler.scratch is None:
                    result = gateway._run_engine(handler, self.module, invocation)
                else:
                    with scratch.provide(invocation, handler.scratch) as provided:
                        result = gateway._run_engine(handler, self.module, provided)
        except Unfit:
            return UNFIT(environ, start_response)
        except (EngineError, OSError) as exc:
            logger.error("[%s] cannot run %s: %s", route, handler.entry.module, exc)
            if stream.started:
                return _cut(client, ResponseCut(f"[{route}] {exc}"))
            return NOT_STARTED(environ, start_response)
        finally:
            stream.finish()
            if observation is not None:
                observation.run_seconds = time.perf_counter() - started
        gateway.ran(route, result)
        if not stream.started:
            if stream.invalid:
                logger.error("[%s] invalid CGI response: %s", route, stream.invalid)
                return NOT_CGI(environ, start_response)
            answer = gateway.to_response(route, result, stream.held, timeout)
            return answer(environ, start_response)
        if result.succeeded:
            return ()
        gateway.log_ending(route, result, timeout)
        return _cut(
            client, ResponseCut(f"[{route}] {result.ending.value} after {stream.sent} body bytes")
        )


def _cut(client: Any, exc: ResponseCut) -> Iterable[bytes]:
    """End a response that already started, short: the client must not see a clean end."""
    if isinstance(client, socket.socket):
        # Cut it ourselves: gunicorn's final chunk then meets a closed socket (which it
        # ignores) instead of an exception it logs with a traceback.
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        return ()
    return _Raising(exc)


class _Raising:
    """A body that raises when read (a server without a socket, ``wagi run``, shows it)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __iter__(self) -> Iterator[bytes]:
        # Nothing first: a reader that takes one item before the written bytes (werkzeug's
        # run_wsgi_app) still gets those bytes before the error.
        yield b""
        raise self.exc
