"""Ready-made answers: complete responses, made once and served many times.

Every error wagi answers itself, and every small module answer, is an :class:`Answer`:
cheaper than a werkzeug ``Response`` per request (the status line and header list are
ready). Errors say what went wrong in a short plain-text line, never the internals (those
go to the log)::

    >>> NOT_FOUND.status, NOT_FOUND.body
    ('404 Not Found', b'404 Not Found\\n')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wagi.server.streaming import status_line

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

HEALTH_PATH = "/healthz"
TIMEOUT_MESSAGE = "the module timed out"
UNFIT_MESSAGE = "this worker can no longer run modules and is being replaced; try again"


class Answer:
    """A complete response, made once and served many times: a WSGI application."""

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
