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

from wagi import scratch
from wagi.cgi_request import build_argv, cgi_variables, raw_path_and_query
from wagi.cgi_response import BadCgiResponse, parse_cgi_response
from wagi.config import Config
from wagi.engines import EngineChoice, choose_engine, create_engine
from wagi.engines.base import Ending, Engine, EngineError, Invocation, RunResult
from wagi.handlers import Handler, StartupError, build_routing_table, invocation_for
from wagi.loader import ModuleLoader
from wagi.module_log import ModuleLog
from wagi.routing import RoutingTable
from wagi.settings import ServerSettings
from wagi.watchdog import Watchdog

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger("wagi")

HEALTH_PATH = "/healthz"


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
        watchdog = Watchdog() if serving and not choice.capabilities.interruptible else None
        engine = create_engine(choice.name, settings.cache_dir)
        loader = ModuleLoader(engine)
        if any(entry.tmp for entry in config.modules):
            try:  # remove what killed workers left behind before serving
                scratch.worker_folder()
            except (scratch.ScratchError, OSError) as exc:
                raise StartupError(f"{config.path}: key 'tmp': {exc}") from None
        table = build_routing_table(config, engine, loader, settings)
        gateway = cls(settings, engine, loader, table, ModuleLog(settings.log_dir))
        gateway.watchdog = watchdog
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
        client = request.environ.get("gunicorn.socket")
        try:
            with scratch.provide(invocation, handler.scratch) as invocation:
                result = self.run(module, invocation, client, route)
        except (EngineError, OSError) as exc:
            logger.error("[%s] cannot run %s: %s", route, handler.entry.module, exc)
            return error_response(500, "the module could not be started")
        self.module_log.write(route, result.stderr)
        return self.to_response(route, result)

    def run(self, module: Any, invocation: Invocation, client: Any, route: str) -> RunResult:
        watchdog = self.watchdog
        timeout = invocation.limits.timeout
        if watchdog is None or timeout is None or not isinstance(client, socket.socket):
            return self.engine.run(module, invocation)
        watchdog.arm(client, timeout, route)
        try:
            return self.engine.run(module, invocation)
        finally:
            watchdog.disarm()

    def to_response(self, route: str, result: RunResult) -> Response:
        if result.ending is Ending.TIMED_OUT:
            logger.error("[%s] timed out after %ss", route, result.detail or "its timeout")
            return error_response(504, "the module timed out")
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
