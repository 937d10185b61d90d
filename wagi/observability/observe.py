"""What the gateway reports about each request: its id, its route, how its module ended.

The gateway makes one :class:`Observation` per request and hands it to its
:class:`Observer` at a few points; everything that watches requests reads it
from here, and nothing else of the gateway:

- the request id: taken from ``X-Request-Id`` when a trusted proxy sent it
  (``--trusted-proxy-hops`` > 0: a header from a client is never believed),
  else generated; it reaches the module as ``X_REQUEST_ID`` and, from a server,
  the client as an ``X-Request-Id`` response header;
- structured logs (:mod:`wagi.observability.logformat`): every log record made while a request
  is served carries its fields (:meth:`Observation.log_fields`), and gunicorn's
  access line those of the request it reports (``environ["wagi.observation"]``);
- metrics (:mod:`wagi.observability.metrics`): one call when the request is over.

A request is over when the server closes its response body (after the last
byte, or when the client went away), so a streamed response counts its whole
time and its module's real ending::

    observation = observer.begin(environ)
    response = gateway.respond(Request(environ), observation)
    return observer.serve(observation, response, environ, start_response)
"""

from __future__ import annotations

import contextvars
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from wagi.engines.base import Ending, RunResult

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from wagi.observability.metrics import Metrics

P = ParamSpec("P")
T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-Id"
ENVIRON_KEY = "wagi.observation"
"""Where the request's :class:`Observation` sits in the WSGI environ (gunicorn's access
log reads it there)."""

_GIVEN_ID = re.compile(r"[A-Za-z0-9._~:/+=@-]{1,200}")
"""What a proxy's request id may look like (nginx's ``$request_id`` is 32 hex digits, others
send UUIDs); anything else is replaced by a generated id, so a log line or header never
carries arbitrary bytes."""


def ending_name(ending: Ending) -> str:
    """``Ending.TIMED_OUT`` -> ``"timed_out"``, the name logs and metrics use."""
    return ending.name.lower()


@dataclass(eq=False)
class Observation:
    """What is known of one request so far; the gateway fills it in as it serves."""

    request_id: str
    engine: str
    started: float
    """:func:`time.perf_counter` when the request arrived."""
    route: str | None = None
    """The matched route pattern (``/healthz`` for the health check); ``None`` when no
    route matched."""
    status: int | None = None
    ending: Ending | None = None
    """How the module's run ended; ``None`` when no module ran."""
    run_seconds: float | None = None
    """How long the engine ran the module."""
    over: bool = False

    def log_fields(self) -> dict[str, Any]:
        """The fields a log record made now carries, those that apply."""
        fields: dict[str, Any] = {"request_id": self.request_id, "engine": self.engine}
        if self.route is not None:
            fields["route"] = self.route
        if self.status is not None:
            fields["status"] = self.status
        fields["duration_ms"] = round((time.perf_counter() - self.started) * 1000, 3)
        if self.run_seconds is not None:
            fields["run_ms"] = round(self.run_seconds * 1000, 3)
        if self.ending is not None:
            fields["ending"] = ending_name(self.ending)
        return fields


_current: contextvars.ContextVar[Observation | None] = contextvars.ContextVar(
    "wagi_observation", default=None
)


def current() -> Observation | None:
    """The request being served on this thread (gunicorn serves a request, its body
    included, on one thread), or ``None`` between requests."""
    return _current.get()


class Observer:
    """Where one worker's gateway reports its requests.

    ``trust_request_id``: take the id from a proxy's ``X-Request-Id`` header.
    ``echo_request_id``: send it back in an ``X-Request-Id`` response header (the
    server does; ``wagi run`` prints only what the module answered).
    ``metrics``: where finished requests are counted, if anywhere.
    """

    def __init__(
        self,
        engine: str,
        *,
        trust_request_id: bool = False,
        echo_request_id: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.trust_request_id = trust_request_id
        self.echo_request_id = echo_request_id
        self.metrics = metrics

    def begin(self, environ: WSGIEnvironment) -> Observation:
        """A request arrives: give it an id, start its clock, make it this thread's current."""
        request_id = None
        if self.trust_request_id:
            given = environ.get("HTTP_X_REQUEST_ID")
            if given and _GIVEN_ID.fullmatch(given):
                request_id = given
        observation = Observation(
            request_id or os.urandom(16).hex(), self.engine, time.perf_counter()
        )
        environ[ENVIRON_KEY] = observation
        _current.set(observation)
        return observation

    def timed(self, run: Callable[P, T]) -> Callable[P, T]:
        """``run`` (an engine run), noting its duration in the current request when called;
        call it on any thread (a runner thread, when the engine streams)."""
        observation = _current.get()

        def timed_run(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                if observation is not None:
                    observation.run_seconds = time.perf_counter() - started

        return timed_run

    def ran(self, result: RunResult) -> None:
        """The current request's module run is over, and ended this way."""
        observation = _current.get()
        if observation is not None:
            observation.ending = result.ending

    def serve(
        self,
        observation: Observation,
        response: WSGIApplication,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Run ``response``, noting its status (and echoing the request id); the request is
        over when the server closes the body."""

        def start(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            observation.status = int(status[:3])
            if self.echo_request_id:
                # The gateway's id, whatever a module may have sent under that name.
                headers = [h for h in headers if h[0].lower() != "x-request-id"]
                headers.append((REQUEST_ID_HEADER, observation.request_id))
            return start_response(status, headers, exc_info)

        try:
            body = response(environ, start)
        except BaseException:
            self.end(observation)
            raise
        return _Body(body, self, observation)

    def end(self, observation: Observation) -> None:
        """The request is over (or failed before it had a response): count it, forget it."""
        if observation.over:
            return
        observation.over = True
        if self.metrics is not None:
            self.metrics.request_ended(
                observation.route,
                observation.status or 500,  # no status: the server answers 500 itself
                time.perf_counter() - observation.started,
                observation.ending,
                observation.run_seconds,
            )
        if _current.get() is observation:
            _current.set(None)


class _Body:
    """A response body whose ``close`` (which the server calls when it is done with it)
    also ends the request; lighter than werkzeug's ClosingIterator, on every request."""

    __slots__ = ("_body", "_observation", "_observer")

    def __init__(self, body: Iterable[bytes], observer: Observer, observation: Observation):
        self._body = body
        self._observer = observer
        self._observation = observation

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._observer.end(self._observation)
