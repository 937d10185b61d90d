"""The ``wasi_experimental_http`` ABI: the five host functions a module calls, one run's state.

A module built for WAGI 0.8 (with the ``wasi-experimental-http`` Rust crate, or any
guest declaring the same imports) calls five functions in the import module
``wasi_experimental_http``; every one takes i32 arguments and returns an i32
error code (:class:`HttpError`, 0 is success)::

    req(url_ptr, url_len, method_ptr, method_len, headers_ptr, headers_len,
        body_ptr, body_len, status_code_ptr, handle_ptr)       -> u16 status, u32 handle
    close(handle)
    header_get(handle, name_ptr, name_len, value_ptr, value_len, written_ptr)
    headers_get_all(handle, buf_ptr, buf_len, written_ptr)   -> "name:value\\n" lines
    body_read(handle, buf_ptr, buf_len, written_ptr)          -> 0 bytes at the end

Request headers travel the same way, ``name:value`` lines.

Everything here is engine-independent. An engine binds the five functions
(:data:`SIGNATURES`) and forwards each call to the run's :class:`OutboundSession`
with a :class:`GuestMemory`, a two-method view of the guest's memory. The session
applies the route's :class:`~wagi.outbound.policy.OutboundPolicy` and sends through
the worker's :class:`~wagi.outbound.client.OutboundClient`; the rules are in
:mod:`wagi.outbound`.
"""

from __future__ import annotations

import base64
import enum
import itertools
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import urllib3

from wagi.outbound import client as _client
from wagi.outbound.client import OutboundClient, worker_client
from wagi.outbound.policy import (
    DEFAULT_PORTS,
    U32,
    Origin,
    OutboundPolicy,
    host_and_port,
)

IMPORT_MODULE = "wasi_experimental_http"
"""The import module name guests use (WAGI 0.8)."""

SIGNATURES: dict[str, int] = {
    "req": 10,
    "close": 1,
    "header_get": 6,
    "headers_get_all": 4,
    "body_read": 4,
}
"""Each function's number of i32 parameters; every one returns one i32."""

MAX_REDIRECTS = 5
FALLBACK_TIMEOUT = 60.0
"""Seconds an outbound request may take in a run that has no deadline."""

_MAX_NOTES = 20
_READ_CHUNK = 64 * 1024
_NOT_ASCII = re.compile(r"[^\x21-\x7e]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HOP_BY_HOP = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)
"""Request headers wagi sets itself; a module's own values are ignored."""
_CROSS_ORIGIN_DROPPED = frozenset({"authorization", "cookie", "proxy-authorization"})


class HttpError(enum.IntEnum):
    """The ABI's error codes (``wasi_experimental_http.witx``)."""

    SUCCESS = 0
    INVALID_HANDLE = 1
    MEMORY_NOT_FOUND = 2
    MEMORY_ACCESS_ERROR = 3
    BUFFER_TOO_SMALL = 4
    HEADER_NOT_FOUND = 5
    UTF8_ERROR = 6
    DESTINATION_NOT_ALLOWED = 7
    INVALID_METHOD = 8
    INVALID_ENCODING = 9
    INVALID_URL = 10
    REQUEST_ERROR = 11
    RUNTIME_ERROR = 12
    TOO_MANY_SESSIONS = 13


class GuestMemoryError(Exception):
    """An access outside the guest's memory, or a guest that exports no memory."""

    def __init__(self, code: HttpError = HttpError.MEMORY_ACCESS_ERROR) -> None:
        super().__init__(code.name)
        self.code = code


class GuestMemory(Protocol):
    """The guest's linear memory as the host functions see it, for one call.

    Both methods raise :class:`GuestMemoryError` for a range outside the memory
    (``GuestMemoryError(HttpError.MEMORY_NOT_FOUND)`` if the module exports none).
    """

    def read(self, ptr: int, length: int) -> bytes: ...

    def write(self, ptr: int, data: bytes) -> None: ...


# -- one run ----------------------------------------------------------------------


class _Failure(Exception):
    """Ends a host call with an error code and, for the log, a note."""

    def __init__(self, code: HttpError, note: str = "") -> None:
        super().__init__(note or code.name)
        self.code = code
        self.note = note


@dataclass
class _Response:
    response: Any  # urllib3.BaseHTTPResponse
    headers: list[tuple[str, str]]
    """Lower-case names, in the order received."""
    url: str
    received: int = 0
    done: bool = False
    failed: str = ""

    def finish(self, reuse: bool) -> None:
        """Give the connection back to the pool (whole body read) or close it."""
        if self.done:
            return
        if not reuse:
            self.response.close()
        self.response.release_conn()
        self.done = True


_session_keys = itertools.count(1)


class OutboundSession:
    """One run's outbound HTTP state: its handles, its deadline, its notes for the log.

    Engines call :meth:`call` from their host functions and :meth:`close_all` when
    the run ends, whatever the ending. A session is used by one thread.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        deadline: float | None,
        *,
        client: OutboundClient | None = None,
        on_deadline: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self.deadline = deadline
        """``time.monotonic()`` value the run must end by, or ``None``."""
        self._client = client
        self.on_deadline = on_deadline
        """Called once when a request is cut short by the deadline (the engine stops the run)."""
        self.timed_out = False
        self.notes: list[str] = []
        self._dropped_notes = 0
        self._handles: dict[int, _Response] = {}
        self._next_handle = 1
        self._key = next(_session_keys)

    # -- for engines --

    def call(self, name: str, memory: GuestMemory, *args: int) -> int:
        """Run the ABI function ``name``; returns its error code. Never raises."""
        try:
            function = self._functions[name]
        except KeyError:
            return int(HttpError.RUNTIME_ERROR)
        try:
            function(self, memory, *(a & U32 for a in args))
            return int(HttpError.SUCCESS)
        except _Failure as failure:
            if failure.note:
                self._note(failure.note)
            return int(failure.code)
        except GuestMemoryError as exc:
            return int(exc.code)
        except Exception as exc:  # a bug here must not take the worker down
            self._note(f"internal error in {name}: {exc!r}")
            return int(HttpError.RUNTIME_ERROR)

    def close_all(self) -> None:
        """Close every response still open (the run has ended)."""
        for handle in list(self._handles):
            self._close(handle)
        if self._client is not None:
            self._client.reaper.forget(self._key)

    def report(self) -> bytes:
        """The notes as lines for the module's log: what was refused or failed, and why."""
        lines = [f"[wagi: outbound HTTP: {note}]\n" for note in self.notes]
        if self._dropped_notes:
            lines.append(f"[wagi: outbound HTTP: {self._dropped_notes} more notes dropped]\n")
        return "".join(lines).encode("utf-8", "replace")

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    # -- the ABI --

    def _req(
        self,
        memory: GuestMemory,
        url_ptr: int,
        url_len: int,
        method_ptr: int,
        method_len: int,
        headers_ptr: int,
        headers_len: int,
        body_ptr: int,
        body_len: int,
        status_ptr: int,
        handle_ptr: int,
    ) -> None:
        if len(self._handles) >= self.policy.max_open:
            raise _Failure(
                HttpError.TOO_MANY_SESSIONS,
                f"{len(self._handles)} responses already open, the limit "
                f"(http_max_concurrency) is {self.policy.max_open}",
            )
        url = _text(memory.read(url_ptr, url_len))
        method = _text(memory.read(method_ptr, method_len))
        if not _TOKEN.fullmatch(method):
            raise _Failure(HttpError.INVALID_METHOD)
        headers = _parse_request_headers(_text(memory.read(headers_ptr, headers_len)))
        body = memory.read(body_ptr, body_len)
        memory.read(status_ptr, 2)  # both results must fit before anything is sent
        memory.read(handle_ptr, 4)
        response = self._send(method, url, headers, body)
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = response
        memory.write(status_ptr, struct.pack("<H", response.response.status))
        memory.write(handle_ptr, struct.pack("<I", handle))

    def _close_abi(self, memory: GuestMemory, handle: int) -> None:
        # WAGI 0.8 answered success to closing an unknown handle; modules may rely on it.
        self._close(handle)

    def _header_get(
        self,
        memory: GuestMemory,
        handle: int,
        name_ptr: int,
        name_len: int,
        value_ptr: int,
        value_len: int,
        written_ptr: int,
    ) -> None:
        response = self._response(handle)
        name = _text(memory.read(name_ptr, name_len)).lower()
        for key, value in response.headers:
            if key == name:
                data = value.encode("latin-1")
                if len(data) > value_len:
                    raise _Failure(HttpError.BUFFER_TOO_SMALL)
                memory.read(written_ptr, 4)
                memory.write(value_ptr, data)
                memory.write(written_ptr, struct.pack("<I", len(data)))
                return
        raise _Failure(HttpError.HEADER_NOT_FOUND)

    def _headers_get_all(
        self, memory: GuestMemory, handle: int, buf_ptr: int, buf_len: int, written_ptr: int
    ) -> None:
        response = self._response(handle)
        data = "".join(f"{k}:{v}\n" for k, v in response.headers).encode("latin-1")
        if len(data) > buf_len:
            raise _Failure(HttpError.BUFFER_TOO_SMALL)
        memory.read(written_ptr, 4)
        memory.write(buf_ptr, data)
        memory.write(written_ptr, struct.pack("<I", len(data)))

    def _body_read(
        self, memory: GuestMemory, handle: int, buf_ptr: int, buf_len: int, written_ptr: int
    ) -> None:
        response = self._response(handle)
        memory.read(written_ptr, 4)
        if buf_len:
            memory.read(buf_ptr + buf_len - 1, 1)
        if response.failed:
            raise _Failure(HttpError.REQUEST_ERROR)
        data = b""
        if not response.done and buf_len:
            data = self._read_body(response, min(buf_len, _READ_CHUNK))
        memory.write(buf_ptr, data)
        memory.write(written_ptr, struct.pack("<I", len(data)))

    _functions: ClassVar[dict[str, Callable[..., None]]] = {
        "req": _req,
        "close": _close_abi,
        "header_get": _header_get,
        "headers_get_all": _headers_get_all,
        "body_read": _body_read,
    }

    # -- the work --

    def _response(self, handle: int) -> _Response:
        response = self._handles.get(handle)
        if response is None:
            raise _Failure(HttpError.INVALID_HANDLE)
        return response

    def _close(self, handle: int) -> None:
        response = self._handles.pop(handle, None)
        if response is not None and not response.done:
            response.finish(reuse=False)

    def _note(self, note: str) -> None:
        if len(self.notes) < _MAX_NOTES:
            self.notes.append(note)
        else:
            self._dropped_notes += 1

    def _remaining(self) -> float:
        if self.deadline is None:
            return FALLBACK_TIMEOUT
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._deadline_passed()
        return remaining

    def _deadline_passed(self) -> _Failure:
        if not self.timed_out:
            self.timed_out = True
            if self.on_deadline is not None:
                self.on_deadline()
            return _Failure(HttpError.REQUEST_ERROR, "the module's deadline passed")
        return _Failure(HttpError.REQUEST_ERROR)

    def _watch(self, sock: socket.socket) -> None:
        if self.deadline is not None and self._client is not None:
            self._client.reaper.watch(self._key, self.deadline, sock)

    def _client_or_new(self) -> OutboundClient:
        if self._client is None:
            self._client = worker_client()
        return self._client

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes) -> _Response:
        hops = 0
        previous: Origin | None = None
        while True:
            parts, scheme, host, port = _parse_url(url)
            origin = self.policy.origin_for(scheme, host, port)
            if origin is None:
                where = "a redirect to " if previous else ""
                raise _Failure(
                    HttpError.DESTINATION_NOT_ALLOWED,
                    f"{where}{_origin_text(scheme, host, port)} is not in allowed_hosts "
                    f"({', '.join(map(str, self.policy.allowed)) or 'empty: deny all'})",
                )
            if previous is not None and previous != origin:
                headers = {k: v for k, v in headers.items() if k not in _CROSS_ORIGIN_DROPPED}
            response = self._send_once(origin, parts, method, headers, body)
            status = response.response.status
            location = response.response.headers.get("location")
            if status not in _REDIRECTS or not location:
                return response
            response.finish(reuse=False)
            hops += 1
            if hops > MAX_REDIRECTS:
                raise _Failure(
                    HttpError.REQUEST_ERROR, f"{url}: more than {MAX_REDIRECTS} redirects"
                )
            url = urljoin(url, location)
            if status == 303 or (status in (301, 302) and method == "POST"):
                method = "GET" if method != "HEAD" else method
                body = b""
                headers = {k: v for k, v in headers.items() if k != "content-type"}
            previous = origin

    def _send_once(
        self, origin: Origin, parts: SplitResult, method: str, headers: dict[str, str], body: bytes
    ) -> _Response:
        client = self._client_or_new()
        url = parts.geturl()
        try:
            addresses = client.resolve(origin.host, origin.port, self._remaining())
        except TimeoutError:
            raise self._deadline_passed() from None
        except OSError as exc:
            raise _Failure(HttpError.REQUEST_ERROR, f"{url}: cannot resolve: {exc}") from None
        usable = [a for a in addresses if origin.admits(a)]
        if not usable:
            raise _Failure(
                HttpError.DESTINATION_NOT_ALLOWED,
                f"{url}: {origin.host} resolves only to {', '.join(map(str, addresses))}: "
                "loopback, link-local and metadata addresses are reached only through an "
                "allowed_hosts entry that is the address itself, such as "
                f"{Origin(origin.scheme, str(addresses[0]), origin.port)}",
            )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        path = _NOT_ASCII.sub(lambda m: quote(m.group(0)), path)
        send_headers = dict(headers)
        send_headers["host"] = parts.netloc.rpartition("@")[2]
        if parts.username is not None:
            credentials = f"{parts.username}:{parts.password or ''}".encode()
            send_headers["authorization"] = "Basic " + base64.b64encode(credentials).decode()
        last_error = ""
        for address in usable:
            remaining = self._remaining()
            pool_kwargs: dict[str, Any] = {}
            if origin.scheme == "https":
                pool_kwargs = {"server_hostname": origin.host, "assert_hostname": origin.host}
            pool = client.pool.connection_from_host(
                str(address), origin.port, origin.scheme, pool_kwargs=pool_kwargs
            )
            _client.current.session = self
            try:
                raw = pool.urlopen(
                    method,
                    path,
                    body=body if body or method not in ("GET", "HEAD") else None,
                    headers=send_headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    timeout=urllib3.Timeout(connect=remaining, read=remaining),
                    preload_content=False,
                    decode_content=False,
                )
            except urllib3.exceptions.NewConnectionError as exc:
                last_error = str(exc.__cause__ or exc)
                continue  # nothing was sent: the next address may answer
            except urllib3.exceptions.ConnectTimeoutError:
                raise self._deadline_or(f"{url}: connecting to {address} timed out") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._deadline_or(f"{url}: {_reason(exc)}") from None
            finally:
                _client.current.session = None
            return self._accept(raw, url, method)
        raise _Failure(HttpError.REQUEST_ERROR, f"{url}: cannot connect: {last_error}")

    def _deadline_or(self, note: str) -> _Failure:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return self._deadline_passed()
        return _Failure(HttpError.REQUEST_ERROR, note)

    def _accept(self, raw: Any, url: str, method: str) -> _Response:
        header_list = [(k.lower(), v) for k, v in raw.headers.items()]
        size = sum(len(k) + len(v) + 2 for k, v in header_list)
        response = _Response(raw, header_list, url)
        if size > self.policy.max_header_bytes:
            response.finish(reuse=False)
            raise _Failure(
                HttpError.REQUEST_ERROR,
                f"{url}: response headers of {size} bytes, over the "
                f"{self.policy.max_header_bytes} byte limit (--outbound-max-headers)",
            )
        length = raw.length_remaining
        if length is not None and length > self.policy.max_body_bytes:
            response.finish(reuse=False)
            raise _Failure(
                HttpError.REQUEST_ERROR,
                f"{url}: response body of {length} bytes, over the "
                f"{self.policy.max_body_bytes} byte limit (--outbound-max-body)",
            )
        if length == 0 or raw.status in (204, 304) or method == "HEAD":
            response.finish(reuse=True)
        return response

    def _read_body(self, response: _Response, amount: int) -> bytes:
        raw = response.response
        remaining = self._remaining()
        connection = raw.connection
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(remaining)
        try:
            data: bytes = raw.read1(amount, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            response.failed = _reason(exc)
            response.finish(reuse=False)
            raise self._deadline_or(f"{response.url}: reading the body: {_reason(exc)}") from None
        if not data:
            response.finish(reuse=True)
            return b""
        response.received += len(data)
        if response.received > self.policy.max_body_bytes:
            response.failed = "too large"
            response.finish(reuse=False)
            raise _Failure(
                HttpError.REQUEST_ERROR,
                f"{response.url}: response body over the {self.policy.max_body_bytes} byte "
                "limit (--outbound-max-body)",
            )
        return data


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Failure(HttpError.UTF8_ERROR) from None


def _parse_url(url: str) -> tuple[SplitResult, str, str, int]:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or any(c.isspace() or ord(c) < 32 for c in url):
            raise ValueError(url)
        host, port = host_and_port(parts)
    except ValueError:
        raise _Failure(HttpError.INVALID_URL, f"invalid URL {url[:200]!r}") from None
    return parts._replace(fragment=""), scheme, host, port


def _origin_text(scheme: str, host: str, port: int) -> str:
    return str(Origin(scheme, host, port))


def _parse_request_headers(text: str) -> dict[str, str]:
    """``name:value`` lines, as the guest crate writes them; hop-by-hop names are dropped."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        value = value.strip()
        if not sep or not _TOKEN.fullmatch(name) or any(ord(c) < 32 and c != "\t" for c in value):
            raise _Failure(HttpError.INVALID_ENCODING, f"invalid request header line {line!r}")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise _Failure(HttpError.INVALID_ENCODING, f"header {name}: not Latin-1") from None
        key = name.lower()
        if key in _HOP_BY_HOP:
            continue
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _reason(exc: BaseException) -> str:
    cause = exc
    while isinstance(cause, urllib3.exceptions.HTTPError) and cause.__context__ is not None:
        cause = cause.__context__
    text = str(cause) or type(cause).__name__
    return text if len(text) <= 300 else text[:300] + "..."
