"""The plain-WSGI contender of ``bench/compare.py``: the ceiling wagi is measured against.

A bare WSGI callable (no framework, no routing) that answers every request with
the same bytes as ``samples/hello.wat``: ``Content-Type: text/plain`` and
``Hello, world!\\n``. ``compare.py`` serves it with the very gunicorn command and
settings it serves wagi with (``bench/gunicorn.conf.py``), so the difference
between the two is what wagi adds per request: werkzeug, routing, the CGI
variables, the module run and the CGI response.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]


STREAM_CHUNK = bytes(256 * 1024)
STREAM_CHUNKS = 4096
"""1 GiB of zero bytes in 256 KiB chunks: what ``bench/stream.wat`` writes (in 1 MiB writes)."""


def stream_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The plain-WSGI side of compare.py's 1 GiB stream: the same bytes, yielded.

    Only ``/stream`` streams; any other path (the start-up check's ``/healthz``) is hello.
    """
    if environ.get("PATH_INFO") != "/stream":
        return app(environ, start_response)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return (STREAM_CHUNK for _ in range(STREAM_CHUNKS))
