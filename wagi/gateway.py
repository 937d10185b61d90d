"""The WSGI application: a request in, a module run, a response out.

:meth:`Gateway.create` does what can be done once per worker: choose and
create the engine, then build the routing table (:mod:`wagi.handlers`).
Serving a request only looks things up::

    raw path -> routing table -> CGI request -> engine run -> CGI response -> WSGI response

Nothing here knows which engine runs; the only engine fact it uses is whether
a running module can be interrupted (if not, a :class:`~wagi.watchdog.Watchdog`
answers 504 when a module overruns its timeout).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request, Response

from wagi.cgi_request import build_argv, cgi_variables, raw_path_and_query
from wagi.cgi_response import BadCgiResponse, parse_cgi_response
from wagi.config import Config
from wagi.engines import create_engine
from wagi.engines.base import Ending, Engine, EngineBroken, EngineError, Invocation, RunResult
from wagi.handlers import Handler, build_routing_table, invocation_for
from wagi.loader import ModuleLoader
from wagi.module_log import ModuleLog
from wagi.policy import EngineChoice, choose_engine
from wagi.routing import RoutingTable
from wagi.settings import ServerSettings
from wagi.watchdog import Watchdog, WatchdogGone
from wagi.worker_health import Unfit, WorkerHealth

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger("wagi")

HEALTH_PATH = "/healthz"
TIMEOUT_MESSAGE = "the module timed out"
UNFIT_MESSAGE = "this worker can no longer run modules and is being replaced; try again"


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


def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes; larger bodies raise RequestEntityTooLarge."""
    request.max_content_length = limit
    body = request.get_data(cache=False)
    # werkzeug stops a chunked body quietly at the limit; see if there was more.
    chunked = request.content_length is None
    if chunked and len(body) == limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return body


class Gateway:
    """The WSGI application of one worker."""

    def __init__(
        self,
        settings: ServerSettings,
        engine: Engine,
        loader: ModuleLoader,
        table: RoutingTable[Handler],
        module_log: ModuleLog,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.loader = loader
        self.table = table
        self.module_log = module_log
        self.watchdog: Watchdog | None = None
        self.health = WorkerHealth(replace=False)
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
            choice = choose_engine(settings.engine, config, settings.max_memory)
        watchdog = None
        if serving and not choice.capabilities.interruptible:
            watchdog = Watchdog(http_bytes(error_response(504, TIMEOUT_MESSAGE)))
        engine = create_engine(choice.name, settings.cache_dir)
        loader = ModuleLoader(engine)
        table = build_routing_table(config, engine, loader, settings)
        gateway = cls(settings, engine, loader, table, ModuleLog(settings.log_dir))
        gateway.watchdog = watchdog
        # A worker that can no longer run modules is replaced (wagi.worker_health).
        gateway.health = WorkerHealth(replace=serving)
        gateway.health.watch(lambda: broken_engine(engine.broken))
        if watchdog is not None:
            gateway.health.watch(watchdog.problem)
        return gateway

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        response = self.respond(request)
        return response(environ, start_response)

    def respond(self, request: Request) -> Response:
        raw_path, query = raw_path_and_query(request.environ)
        if raw_path == HEALTH_PATH and request.method in ("GET", "HEAD"):
            if self.health.problem():
                return error_response(503, UNFIT_MESSAGE)
            return Response("OK", content_type="text/plain; charset=utf-8")
        match = self.table.match(raw_path)
        if match is None:
            return error_response(404)
        try:
            body = read_body(request, self.settings.max_body)
        except RequestEntityTooLarge:
            return error_response(413, f"the body is larger than {self.settings.max_body} bytes")
        except BadRequest:
            return error_response(400, "the request body could not be read")
        handler = match.handler
        route = match.route.pattern
        cgi_env = cgi_variables(
            request,
            raw_path=raw_path,
            query=query,
            script_name=match.script_name,
            raw_path_info=match.raw_path_info,
            matched_route=route,
            body_length=len(body),
            default_host=self.settings.default_host,
        )
        argv = build_argv(handler.entry.argv, match.script_name, query)
        try:
            module = self.loader.get(handler.entry.module)
        except (EngineError, OSError) as exc:
            logger.error("[%s] cannot load %s: %s", route, handler.entry.module, exc)
            return error_response(500, "the module could not be loaded")
        invocation = invocation_for(handler, argv, cgi_env, body)
        try:
            result = self.run(module, invocation, request.environ.get("gunicorn.socket"), route)
        except Unfit:
            return error_response(503, UNFIT_MESSAGE)
        except EngineError as exc:
            logger.error("[%s] cannot run %s: %s", route, handler.entry.module, exc)
            return error_response(500, "the module could not be started")
        self.module_log.write(route, result.stderr)
        return self.to_response(route, result)

    def run(self, module: Any, invocation: Invocation, client: Any, route: str) -> RunResult:
        """Run ``module``, under the watchdog if the engine needs one.

        Raises :class:`~wagi.worker_health.Unfit` when this worker can no longer run
        modules (the worker is then being replaced).
        """
        if problem := self.health.problem():
            raise Unfit(problem)
        watchdog = self.watchdog
        timeout = invocation.limits.timeout
        if watchdog is None or timeout is None or not isinstance(client, socket.socket):
            return self._run_engine(module, invocation)
        try:
            watchdog.arm(client, timeout, route)
        except WatchdogGone as exc:
            self.health.unfit(str(exc))
            raise Unfit(str(exc)) from None
        try:
            result = self._run_engine(module, invocation)
        finally:
            try:
                watchdog.disarm()
            except WatchdogGone as exc:  # died during the run: this result still stands
                self.health.unfit(str(exc))
        return result

    def _run_engine(self, module: Any, invocation: Invocation) -> RunResult:
        try:
            return self.engine.run(module, invocation)
        except EngineBroken as exc:
            self.health.unfit(broken_engine(str(exc)))
            raise Unfit(str(exc)) from None

    def to_response(self, route: str, result: RunResult) -> Response:
        if result.ending is Ending.TIMED_OUT:
            logger.error("[%s] timed out after %ss", route, result.detail or "its timeout")
            return error_response(504, TIMEOUT_MESSAGE)
        if result.ending is Ending.OUTPUT_TOO_LARGE:
            logger.error("[%s] wrote more than %d bytes", route, self.settings.max_response)
            return error_response(500, "the module's response was too large")
        if result.ending is Ending.EXITED:
            logger.error("[%s] exited with code %d", route, result.exit_code)
            return error_response(500, "the module failed")
        if result.ending is Ending.TRAPPED:
            logger.error("[%s] trapped: %s", route, result.detail)
            return error_response(500, "the module failed")
        try:
            cgi = parse_cgi_response(result.stdout)
        except BadCgiResponse as exc:
            logger.error("[%s] invalid CGI response: %s", route, exc)
            return error_response(500, "the module's response was not valid CGI")
        return CgiHttpResponse(
            cgi.body, status=status_line(cgi.status, cgi.reason), headers=cgi.headers
        )
