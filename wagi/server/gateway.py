"""The WSGI application: a request in, a module run, a response out.

A :class:`Gateway` serves with a worker that :func:`~wagi.server.worker.build_worker`
assembled once (engine, compiled modules, routing table, run sites behind the kernel
wall); it builds nothing and knows neither Landlock nor scratch folders. Serving a
request only looks things up::

    raw path -> routing table -> CGI request -> run site -> CGI response -> WSGI response

Where a module runs (:class:`~wagi.execution.sites.RunSites`):

- **on the serving thread** (wasmtime in a confined worker, or without a wall):
  the module's stdout goes to a :class:`~wagi.server.streaming.ClientStream`, which
  answers small, quick responses whole (with a Content-Length) and streams the
  others through WSGI ``write`` as the module writes them (:class:`_StreamedRun`);
- **on a route's own confined thread** (wasmer, routes with volumes), or on a confined
  runner thread when this process must stay unconfined (``wagi run``): the output is
  answered when the run ends (:meth:`Gateway._answer_when_done`).

An engine that cannot be *interrupted* gets a :class:`~wagi.server.watchdog.Watchdog`
that answers 504 when a module overruns its timeout.

Each request is reported to the worker's :class:`~wagi.observability.observe.Observer`
(request id, route, how the module ended, when it is over); logs and metrics read it there.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request, Response

from wagi.cgi.request import cgi_variables, raw_path_and_query
from wagi.cgi.response import BadCgiResponse, parse_cgi_response
from wagi.engines.base import Ending, EngineError, Invocation, LoadedModule, RunResult
from wagi.execution.handlers import Handler
from wagi.execution.sites import WorkerUnfit
from wagi.observability.observe import Observation
from wagi.observability.observe import current as current_observation
from wagi.routing import request_host
from wagi.server.answers import (
    FAILED,
    HEALTH_PATH,
    NOT_CGI,
    NOT_FOUND,
    NOT_LOADED,
    NOT_STARTED,
    NUL_IN_PATH,
    OK,
    TIMED_OUT,
    TOO_LARGE,
    UNFIT,
    UNREADABLE_BODY,
    Answer,
    error_response,
)
from wagi.server.body import EMPTY_BODY, Body, has_body, read_body
from wagi.server.streaming import ClientStream, status_line
from wagi.server.watchdog import WatchdogGone
from wagi.server.worker import Worker

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    WsgiResponse = WSGIApplication
    """What :meth:`Gateway.respond` returns: an :class:`Answer` or a run to serve."""

logger = logging.getLogger("wagi")


class CgiHttpResponse(Response):
    # A module that sends only ``Status: 204`` gets no invented Content-Type.
    default_mimetype = None


class ResponseCut(Exception):
    """A module failed after bytes of its response were sent: the response is cut short
    (gunicorn closes the connection), so the client sees a truncated body, never a clean
    end. Raised from the body of a response served without a client socket (``wagi run``)."""


class Gateway:
    """The WSGI application of one worker: serves with a :class:`~wagi.server.worker.Worker`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        # The parts a request looks up, one attribute away (the hot path).
        self.settings = worker.settings
        self.engine = worker.engine
        self.loader = worker.loader
        self.table = worker.table
        self.sites = worker.sites
        self.observer = worker.observer
        self.module_log = worker.module_log
        self.health = worker.health
        self.watchdog = worker.watchdog
        self.streams = worker.engine.capabilities.streaming
        self._checks: dict[int, Callable[[LoadedModule], None]] = {}
        self.wsgi_app: Any = self.app
        if self.settings.trusted_proxy_hops:
            hops = self.settings.trusted_proxy_hops
            self.wsgi_app = ProxyFix(self.app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)

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
                body = read_body(Request(environ), self.settings.max_body, self.worker.transient)
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
            return _StreamedRun(self, handler, module, argv, cgi_env, route, body)
        invocation = handler.invocation(argv, cgi_env, body.data, body.path)
        return self._answer_when_done(
            handler, module, invocation, route, body, environ, observation.request_id
        )

    # -- running ---------------------------------------------------------------------

    def _answer_when_done(
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
            with body:
                run = self.observer.timed(self._run_watched)
                result = run(handler, module, invocation, client, route, request_id)
        except WorkerUnfit as exc:
            self.health.unfit(str(exc))
            return UNFIT
        except (EngineError, OSError) as exc:
            logger.error("[%s] cannot run %s: %s", route, handler.entry.module, exc)
            return NOT_STARTED
        self.ran(route, result)
        return self.to_response(route, result, result.stdout, handler.limits.timeout)

    def _run_watched(
        self,
        handler: Handler,
        module: LoadedModule,
        invocation: Invocation,
        client: Any,
        route: str,
        request_id: str = "",
    ) -> RunResult:
        """Run ``module`` at its run site, under the watchdog if the engine needs one, and
        wait for the result. Raises :class:`~wagi.execution.sites.WorkerUnfit` when this
        worker turns out unable to run modules (it is then being replaced)."""
        watchdog = self.watchdog
        timeout = invocation.limits.timeout
        if watchdog is None or timeout is None or not isinstance(client, socket.socket):
            return self.sites.run_module(handler, module, invocation)
        try:
            watchdog.arm(client, timeout, route, request_id)
        except WatchdogGone as exc:
            raise WorkerUnfit(str(exc)) from None
        try:
            result = self.sites.run_module(handler, module, invocation)
        finally:
            try:
                watchdog.disarm()
            except WatchdogGone as exc:  # died during the run: this result still stands
                self.health.unfit(str(exc))
        return result

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


class _StreamedRun:
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
                result = gateway.sites.run_module(handler, self.module, invocation)
        except WorkerUnfit as exc:
            gateway.health.unfit(str(exc))
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
