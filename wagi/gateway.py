"""The WSGI application: a request in, a module run, a response out.

:meth:`Gateway.create` does what can be done once per worker: choose and
create the engine, then build the routing table (:mod:`wagi.handlers`).
Serving a request only looks things up::

    raw path -> routing table -> CGI request -> engine run -> CGI response -> WSGI response

Nothing here knows which engine runs; it uses two engine facts. An engine that
can *stream* runs modules on runner threads (:mod:`wagi.runner`) and writes
stdout into a pipe: once the header block is complete the body goes to the
client as the module writes it (small responses, complete within a few
milliseconds, are still sent whole with a Content-Length). An engine that
cannot stream runs the module here and the response is sent when it ends. An
engine that cannot be *interrupted* gets a :class:`~wagi.watchdog.Watchdog`
that answers 504 when a module overruns its timeout.

Each request is reported to the worker's :class:`~wagi.observe.Observer` (request
id, route, how the module ended, when it is over); logs and metrics read it there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import IO, TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request, Response

from wagi import landlock, scratch, wall
from wagi.cgi_request import build_argv, cgi_variables, raw_path_and_query
from wagi.cgi_response import BadCgiResponse, parse_cgi_response, parse_head, split_head
from wagi.config import Config
from wagi.confined import RunSites
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
from wagi.handlers import Handler, StartupError, build_routing_table, invocation_for
from wagi.loader import ModuleLoader
from wagi.module_log import ModuleLog
from wagi.observe import Observation, Observer
from wagi.policy import EngineChoice, choose_engine
from wagi.routing import RoutingTable, request_host
from wagi.runner import Job
from wagi.settings import ServerSettings
from wagi.watchdog import Watchdog, WatchdogGone
from wagi.worker_health import Unfit, WorkerHealth

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    WsgiResponse = WSGIApplication
    """What :meth:`Gateway.respond` returns: a werkzeug Response or a streamed body."""

logger = logging.getLogger("wagi")

HEALTH_PATH = "/healthz"
TIMEOUT_MESSAGE = "the module timed out"
UNFIT_MESSAGE = "this worker can no longer run modules and is being replaced; try again"

STREAM_AFTER = 0.005
"""Seconds a module's output is held back (see ``Invocation.stream_after``): a module
that ends sooner is answered whole, with a Content-Length, for one thread hand-off."""

HEAD_LIMIT = 64 * 1024
"""A header block longer than this is not a valid CGI response."""

_CHUNK = 256 * 1024


class ResponseCut(Exception):
    """Raised from a streamed body when the module failed after bytes were sent: gunicorn
    then closes the connection, so the client sees a truncated body, never a clean end."""


class CgiHttpResponse(Response):
    # A module that sends only ``Status: 204`` gets no invented Content-Type.
    default_mimetype = None


def status_line(code: int, reason: str | None = None) -> str:
    """``404`` -> ``"404 Not Found"`` (werkzeug would say ``"404 NOT FOUND"``)."""
    if reason is None:
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Unknown"
    return f"{code} {reason}"


def error_response(status: int, message: str = "") -> Response:
    """A short plain-text error: what went wrong, never the internals (those go to the log)."""
    text = status_line(status) + (f": {message}" if message else "") + "\n"
    return Response(text, status=status_line(status), content_type="text/plain; charset=utf-8")


def http_bytes(response: Response) -> bytes:
    """``response`` as HTTP/1.1 bytes on the wire, ending the connection (for the watchdog)."""
    head = [f"HTTP/1.1 {response.status}", *(f"{k}: {v}" for k, v in response.headers.items())]
    head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.get_data()


def broken_engine(why: str) -> str:
    return f"its engine is broken ({why})" if why else ""


SPOOL_ABOVE = 1024 * 1024
"""Request bodies larger than this (or chunked ones that grow past it) go to an unlinked
temporary file that the module gets as its stdin file: never held whole in memory."""


class Body:
    """A request body: small ones as bytes, large ones spooled to an unlinked file."""

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
    # In the worker's folder, which the kernel wall (wagi.wall) lets runner threads read.
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
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.loader = loader
        self.table = table
        self.module_log = module_log
        self.observer = observer or Observer(engine.name)
        self.watchdog: Watchdog | None = None
        self.health = WorkerHealth(replace=False)
        self.sites = sites
        """The threads modules run on, behind the kernel wall (wagi.confined, wagi.wall)."""
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
    ) -> Gateway:
        """Everything a worker needs to serve: engine, compiled modules, routing table.

        ``serving`` (a gunicorn worker) also starts the 504 watchdog when the engine
        cannot interrupt a module, before the engine exists: nothing is spawned from a
        process that has already compiled.
        """
        if choice is None:
            choice = choose_engine(
                settings.engine, config, settings.max_memory, settings.kernel_wall
            )
        metrics = None
        if serving and settings.metrics_bind:
            from wagi.metrics import Metrics  # prometheus_client only where metrics are on

            metrics = Metrics()
        watchdog = None
        if serving and not choice.capabilities.interruptible:
            watchdog = Watchdog(http_bytes(error_response(504, TIMEOUT_MESSAGE)), choice.name)
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
                engine.capabilities, config, settings.kernel_wall, settings.cache_dir
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
        gateway = cls(settings, engine, loader, table, module_log, sites, observer)
        gateway.watchdog = watchdog
        # A worker that can no longer run modules is replaced (wagi.worker_health).
        gateway.health = WorkerHealth(replace=serving)
        gateway.health.watch(lambda: broken_engine(engine.broken))
        if watchdog is not None:
            gateway.health.watch(watchdog.problem)
        # Spooled bodies and scratch directories go there, and the wall grants that very
        # directory: one made again would be out of reach of the threads that run modules.
        gateway.health.watch(lambda: scratch.folder_problem(transient))
        return gateway

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        observation = self.observer.begin(environ)
        try:
            response = self.respond(Request(environ), observation)
        except BaseException:
            self.observer.end(observation)
            raise
        return self.observer.serve(observation, response, environ, start_response)

    def respond(self, request: Request, observation: Observation) -> WsgiResponse:
        raw_path, query = raw_path_and_query(request.environ)
        if raw_path == HEALTH_PATH and request.method in ("GET", "HEAD"):
            observation.route = HEALTH_PATH
            if self.health.problem():
                return error_response(503, UNFIT_MESSAGE)
            return Response("OK", content_type="text/plain; charset=utf-8")
        if "%00" in raw_path or "\0" in raw_path:
            # PATH_INFO would hold a NUL, which no C string (argv, environment) can carry.
            return error_response(400, "the path holds a NUL byte (%00)")
        match = self.table.match(
            raw_path, request_host(request.environ, self.settings.default_host)
        )
        if match is None:
            return error_response(404)
        if self.health.problem():
            return error_response(503, UNFIT_MESSAGE)
        try:
            body = read_body(request, self.settings.max_body)
        except RequestEntityTooLarge:
            return error_response(413, f"the body is larger than {self.settings.max_body} bytes")
        except BadRequest:
            return error_response(400, "the request body could not be read")
        handler = match.handler
        route = observation.route = match.route.pattern
        cgi_env = cgi_variables(
            request,
            raw_path=raw_path,
            query=query,
            script_name=match.script_name,
            raw_path_info=match.raw_path_info,
            matched_route=route,
            body_length=body.length,
            default_host=self.settings.default_host,
            request_id=observation.request_id,
        )
        argv = build_argv(handler.entry.argv, match.script_name, query)
        try:
            module = self.loader.get(handler.entry.module, functools.partial(self.check, handler))
        except (EngineError, OSError) as exc:
            logger.error("[%s] cannot load %s: %s", route, handler.entry.module, exc)
            return error_response(500, "the module could not be loaded")
        if self.engine.capabilities.streaming:
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            invocation = invocation_for(
                handler,
                argv,
                cgi_env,
                body.data,
                body.path,
                stdout_fd=write_fd,
                stream_after=STREAM_AFTER,
            )
            return self.stream(handler, module, invocation, route, body, read_fd)
        invocation = invocation_for(handler, argv, cgi_env, body.data, body.path)
        client = request.environ.get("gunicorn.socket")
        try:
            with scratch.provide(invocation, handler.scratch) as invocation, body:
                run = self.observer.timed(self.run)
                result = run(handler, module, invocation, client, route, observation.request_id)
        except Unfit:
            return error_response(503, UNFIT_MESSAGE)
        except (EngineError, OSError) as exc:
            logger.error("[%s] cannot run %s: %s", route, handler.entry.module, exc)
            return error_response(500, "the module could not be started")
        self.ran(route, result)
        return self.to_response(route, result, result.stdout, handler.limits.timeout)

    # -- streaming engines ----------------------------------------------------------

    def stream(
        self,
        handler: Handler,
        module: Any,
        invocation: Invocation,
        route: str,
        body: Body,
        read_fd: int,
    ) -> WsgiResponse:
        """Run on a runner thread; send the body as the module writes it.

        ``invocation.stdout_fd`` is the write end of a pipe whose read end is ``read_fd``.
        """
        write_fd = invocation.stdout_fd
        assert write_fd is not None
        try:
            os.set_blocking(write_fd, False)  # the engine waits for room up to the deadline
            run = functools.partial(
                self.observer.timed(self.run_with_scratch), module, invocation, handler, body
            )
            job = self.sites.pool_for(handler).submit(run, close_fd=write_fd)
        except landlock.WallError as exc:
            os.close(read_fd)
            self.wall_failed(exc)
            return error_response(503, UNFIT_MESSAGE)
        except BaseException:
            os.close(read_fd)
            raise
        output = _PipeReader(read_fd, job)
        timeout = handler.limits.timeout
        try:
            streamed, complete = output.read_head()
            if complete:  # the module ended: held output in the result, the rest piped
                output.close()
                result = job.result()
                self.ran(route, result)
                return self.to_response(route, result, result.stdout + streamed, timeout)
            parts = split_head(streamed)
            try:
                if parts is None:
                    raise BadCgiResponse(f"no header block within the first {HEAD_LIMIT} bytes")
                cgi = parse_head(parts[0])
            except BadCgiResponse as exc:
                output.abandon()
                self.ran(route, job.result())
                logger.error("[%s] invalid CGI response: %s", route, exc)
                return error_response(500, "the module's response was not valid CGI")
        except (EngineError, OSError) as exc:
            output.abandon()
            logger.error("[%s] cannot run %s: %s", route, handler.entry.module, exc)
            return error_response(500, "the module could not be started")
        except BaseException:
            output.abandon()
            raise
        return _StreamedResponse(
            self,
            route,
            output,
            parts[1],
            status_line(cgi.status, cgi.reason),
            cgi.headers,
            timeout,
        )

    def run_with_scratch(
        self, module: Any, invocation: Invocation, handler: Handler, body: Body
    ) -> RunResult:
        """On a runner thread: the run, with the route's scratch directory (and a spooled
        request body) for its lifetime."""
        with scratch.provide(invocation, handler.scratch) as provided, body:
            return self.engine.run(module, provided)

    def finish_stream(
        self, route: str, job: Job[RunResult], sent: int, timeout: float | None
    ) -> None:
        """After a streamed body: log how the module ended; cut the response if it failed."""
        result = job.result()
        self.ran(route, result)
        if result.succeeded:
            return
        self.log_ending(route, result, timeout)
        raise ResponseCut(f"[{route}] {result.ending.value} after {sent} body bytes were sent")

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
        """Run ``module``, under the watchdog if the engine needs one.

        Raises :class:`~wagi.worker_health.Unfit` when this worker turns out unable to run
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
        self, route: str, result: RunResult, stdout: bytes, timeout: float | None = None
    ) -> Response:
        ending = result.ending
        if ending is not Ending.RETURNED:
            self.log_ending(route, result, timeout)
            if ending is Ending.TIMED_OUT:
                return error_response(504, TIMEOUT_MESSAGE)
            if ending is Ending.OUTPUT_TOO_LARGE:
                return error_response(500, "the module's response was too large")
            return error_response(500, "the module failed")
        try:
            cgi = parse_cgi_response(stdout)
        except BadCgiResponse as exc:
            logger.error("[%s] invalid CGI response: %s", route, exc)
            return error_response(500, "the module's response was not valid CGI")
        return CgiHttpResponse(
            cgi.body, status=status_line(cgi.status, cgi.reason), headers=cgi.headers
        )


class _PipeReader:
    """A streaming module's stdout, read on the serving thread."""

    def __init__(self, fd: int, job: Job[RunResult]) -> None:
        self.fd = fd
        self.job = job
        self.closed = False

    def read(self) -> bytes:
        return os.read(self.fd, _CHUNK)

    def read_head(self) -> tuple[bytearray, bool]:
        """Read until the header block is complete or the module ends.

        Returns ``(output so far, complete)``; ``complete`` means the module has
        ended (EOF). A module that ends before it streams sends nothing here at all.
        Without ``complete``, the output holds a whole header block unless it grew
        past :data:`HEAD_LIMIT` without one.
        """
        output = bytearray()
        while split_head(output) is None:
            if len(output) > HEAD_LIMIT:
                return output, False
            chunk = self.read()
            if not chunk:
                return output, True
            output += chunk
        return output, False

    def abandon(self) -> None:
        """Stop reading: the module's next write fails (EPIPE) and its run ends."""
        self.close()
        with contextlib.suppress(BaseException):  # reported by whoever waits for it
            self.job.result()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class _StreamedResponse:
    """The WSGI body of a streamed response: status and headers first, then chunks."""

    def __init__(
        self,
        gateway: Gateway,
        route: str,
        output: _PipeReader,
        body: bytes,
        status: str,
        headers: list[tuple[str, str]],
        timeout: float | None,
    ) -> None:
        self.gateway = gateway
        self.route = route
        self.output = output
        self.first = body
        self.status = status
        self.headers = headers
        self.timeout = timeout

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.chunks(environ, start_response)

    def chunks(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        """The status goes out with the first body byte: a module that fails before
        writing one still gets a clean error response (a 504 for a timeout)."""
        output = self.output
        finished = False
        try:
            first = self.first or output.read()
            if not first:  # the module ended after its header block, with no body
                output.close()
                result = output.job.result()
                self.gateway.ran(self.route, result)
                finished = True
                if not result.succeeded:
                    error = self.gateway.to_response(self.route, result, b"", self.timeout)
                    yield from error(environ, start_response)
                    return
                start_response(self.status, self.headers)
                return
            start_response(self.status, self.headers)
            sent = len(first)
            yield first
            while chunk := output.read():
                sent += len(chunk)
                yield chunk
            output.close()
            finished = True
            client = environ.get("gunicorn.socket")
            try:
                self.gateway.finish_stream(self.route, output.job, sent, self.timeout)
            except ResponseCut:
                if not isinstance(client, socket.socket):
                    raise
                # Cut the response ourselves: gunicorn's final chunk then meets a closed
                # socket (which it ignores) instead of an exception it logs with a traceback.
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
        finally:
            if not finished:  # the client went away, or sending failed: stop the module
                output.abandon()
                with contextlib.suppress(BaseException):
                    result = output.job.result()
                    self.gateway.ran(self.route, result)
                    self.gateway.log_ending(self.route, result, self.timeout)
