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
