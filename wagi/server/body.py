"""Request bodies: small ones held as bytes, large ones spooled to an unlinked file.

A module gets a spooled body as its stdin *file* (``/proc/self/fd/N``), so a large
upload is never held whole in memory; the spool lives in the worker's folder of
transient files, which the kernel wall lets the threads that run modules read.
"""

from __future__ import annotations

import tempfile
from typing import IO, TYPE_CHECKING

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

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


def read_body(request: Request, limit: int, spool_dir: str | None = None) -> Body:
    """The request body, at most ``limit`` bytes; larger bodies raise RequestEntityTooLarge.

    A large body is spooled in ``spool_dir`` (a worker's folder of transient files, which
    the kernel wall lets the threads that run modules read; default: the system's).
    """
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
    spool = tempfile.TemporaryFile(prefix="wagi-body-", dir=spool_dir)  # noqa: SIM115
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
