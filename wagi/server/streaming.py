"""A module's stdout straight to the client, from the thread that runs it.

:class:`ClientStream` is the :class:`~wagi.engines.base.StdoutSink` of a run on the
serving thread. It holds the module's output back until the header block is
complete *and* either the module has written :data:`HOLD_LIMIT` bytes or it has
written nothing for :data:`STREAM_AFTER` seconds while it goes on running (it is
computing: what it wrote so far goes out now); a run that ends first is answered
whole, with a Content-Length. Counting from the last write rather than the first
keeps a module that writes steadily (and may yet overrun ``--max-response``, a 500
while nothing was sent) whole however busy the machine is. Otherwise it parses the
header block, calls ``start_response`` and from then on hands every byte to the
server's ``write`` as the module writes it: no pipe, no second thread, memory
bounded by the hold limit.

A slow client cannot keep a module past its deadline: each write waits for the
client socket at most until the run's deadline (``OutputTimedOut``, and the run
ends as timed out). A client that went away ends the run as cancelled
(``OutputGone``). An invalid header block ends the run the same way, before
anything was sent, and the gateway answers 500.

::

    stream = ClientStream(start_response, client_socket, deadline)
    result = engine.run(module, Invocation(..., stdout=stream))
    if stream.started: ...   # the status went out; the body followed as written
    else: ...                # nothing sent: answer from result.stdout (held whole)
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

from wagi.cgi.response import BadCgiResponse, parse_head, split_head
from wagi.engines.base import OutputGone, OutputTimedOut, StdoutSink

STREAM_AFTER = 0.005
"""Seconds of silence after a write (the module computing) after which held output goes
out; a module that ends first is answered whole, with a Content-Length."""

HOLD_LIMIT = 256 * 1024
"""stdout bytes held back at most before streaming starts (once the header block is there)."""

HEAD_LIMIT = 64 * 1024
"""A header block longer than this is not a valid CGI response."""


def status_line(code: int, reason: str | None = None) -> str:
    """``404`` -> ``"404 Not Found"`` (werkzeug would say ``"404 NOT FOUND"``)."""
    if reason is None:
        reason = _PHRASES.get(code, "Unknown")
    return f"{code} {reason}"


def _phrases() -> dict[int, str]:
    from http import HTTPStatus

    return {status.value: status.phrase for status in HTTPStatus}


_PHRASES = _phrases()


class ClientStream(StdoutSink):
    """A run's stdout to the client: held, then streamed through WSGI ``write``."""

    __slots__ = (
        "_client",
        "_deadline",
        "_head",
        "_held",
        "_start_response",
        "_stream_after",
        "_stream_at",
        "_write",
        "invalid",
        "sent",
    )

    def __init__(
        self,
        start_response: Callable[..., Callable[[bytes], object]],
        client: Any,
        deadline: float | None,
        stream_after: float = STREAM_AFTER,
    ) -> None:
        self._start_response = start_response
        self._client = client if isinstance(client, socket.socket) else None
        self._deadline = deadline
        self._stream_after = stream_after
        self._stream_at = 0.0
        self._held = bytearray()
        self._head: tuple[str, list[tuple[str, str]]] | None = None
        """The parsed header block, once streaming is due but no body byte came yet."""
        self._write: Callable[[bytes], object] | None = None
        self.invalid = ""
        """Why the header block was refused (for the log), once it was."""
        self.sent = 0
        """Body bytes handed to the server."""

    @property
    def started(self) -> bool:
        """The status went out: the response can no longer change, only be cut short."""
        return self._write is not None

    @property
    def held(self) -> bytearray:
        """What the module wrote while nothing was sent yet (all of it, if never started)."""
        return self._held

    def write(self, data: memoryview) -> None:
        if self._write is not None:
            self._send(bytes(data))
            return
        if self._head is not None:  # the first body byte: now the status goes out
            self._begin(self._head, bytes(data))
            return
        self._held += data
        self._stream_at = time.monotonic() + self._stream_after  # counted from the last write
        if len(self._held) >= HOLD_LIMIT:
            self._start()

    def tick(self) -> None:
        if self._head is None and self._held and time.monotonic() >= self._stream_at:
            self._start()

    def _start(self) -> None:
        parts = split_head(self._held)
        if parts is None:
            if len(self._held) <= HEAD_LIMIT:
                return  # keep holding until the header block is complete
            self.invalid = f"no header block within the first {HEAD_LIMIT} bytes"
            raise OutputGone("the module's response is not valid CGI")
        try:
            head = parse_head(parts[0])
        except BadCgiResponse as exc:
            self.invalid = str(exc)
            raise OutputGone("the module's response is not valid CGI") from None
        status = status_line(head.status, head.reason)
        if not parts[1]:
            # The status goes out with the first body byte: a module that fails before
            # writing one still gets a clean error response (a 504 for a timeout).
            self._head = (status, list(head.headers))
            return
        self._begin((status, list(head.headers)), parts[1])

    def _begin(self, head: tuple[str, list[tuple[str, str]]], body: bytes) -> None:
        self._write = self._start_response(*head)
        self._held = bytearray()
        self._send(body)

    def _send(self, data: bytes) -> None:
        assert self._write is not None
        client = self._client
        deadline = self._deadline
        try:
            if client is not None and deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OutputTimedOut("still waiting for the client to take its output")
                client.settimeout(remaining)  # a slow client waits no longer than the module
            self._write(data)
        except TimeoutError:
            raise OutputTimedOut("still waiting for the client to take its output") from None
        except OSError as exc:
            raise OutputGone(exc.strerror or str(exc)) from None
        self.sent += len(data)

    def finish(self) -> None:
        """The run is over: the client socket blocks without a timeout again (keep-alive)."""
        if self._client is not None and self._deadline is not None and self._write is not None:
            with contextlib.suppress(OSError):
                self._client.settimeout(None)
