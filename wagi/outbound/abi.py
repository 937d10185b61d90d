"""Outbound HTTP for modules: the host side of WAGI 0.8's ``wasi_experimental_http`` ABI.

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
with a :class:`GuestMemory`, a two-method view of the guest's memory.

The policy, decided once at start-up from ``modules.toml`` (:class:`OutboundPolicy`):

- **Deny by default.** ``allowed_hosts`` lists origins, ``scheme://host[:port]``; a
  URL is allowed when its scheme, host and port (the scheme's default when absent)
  equal one entry's. WAGI 0.8 compared the host name only; comparing the whole
  origin means ``https://api.example.com`` does not open ``http://api.example.com:6379``.
  Anything else gets :attr:`HttpError.DESTINATION_NOT_ALLOWED`.
- **Redirects** are followed (WAGI 0.8 followed them, anywhere), at most
  :data:`MAX_REDIRECTS` hops, and only to allowed origins: a redirect elsewhere ends
  the request with ``DESTINATION_NOT_ALLOWED``. Credentials and cookies are dropped
  when a redirect changes origin.
- **SSRF guard.** wagi resolves the host name itself, refuses the addresses that
  are loopback, link-local, unspecified, multicast or a cloud metadata service
  (:func:`is_special_address`) unless the allow-list entry is that IP address itself
  (``http://127.0.0.1:8080``; ``http://localhost:8080`` is not enough), and connects
  to the address it checked, so a DNS answer that changes between check and use
  cannot move the connection.
- **Bounded.** Each request (connect, send, headers, every body read) ends at the
  run's deadline: a per-process reaper thread shuts the socket down when the deadline
  passes, so even a server that drips one byte at a time cannot hold the module past
  it. Response headers are capped at ``max_header_bytes`` and bodies at
  ``max_body_bytes`` (over: :attr:`HttpError.REQUEST_ERROR`); a run holds at most
  ``http_max_concurrency`` (and never more than :data:`MAX_HANDLES`) responses open
  at once (over: :attr:`HttpError.TOO_MANY_SESSIONS`), each holding one connection.
  Everything a run opened is closed when it ends.

The client is urllib3 (a dependency of pip and requests, so already on every
machine that installs wagi): one :class:`urllib3.PoolManager` per worker process,
reused across requests (keep-alive), that can be pointed at a checked IP address
while it still verifies TLS against the host name (``server_hostname``,
``assert_hostname``), reads bodies raw and incrementally (``read1``, no
decompression, so the size cap counts the bytes on the wire), never reads proxy
settings from the environment, and leaves redirects to this module.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import enum
import heapq
import ipaddress
import itertools
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.ssl_ import create_urllib3_context

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

MAX_HANDLES = 64
"""Responses one run may hold open at once, whatever ``http_max_concurrency`` says:
each holds a connection (a file descriptor of the worker)."""

MAX_REDIRECTS = 5
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
"""The Rust guest crate reads the header map into 64 KiB; so does the default cap."""
DEFAULT_MAX_BODY_BYTES = 16 * 1024**2
FALLBACK_TIMEOUT = 60.0
"""Seconds an outbound request may take in a run that has no deadline."""

_MAX_NOTES = 20
_READ_CHUNK = 64 * 1024
_U32 = 0xFFFFFFFF
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
_DEFAULT_PORTS = {"http": 80, "https": 443}

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
    )
)


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


# -- the policy, from modules.toml ---------------------------------------------


@dataclass(frozen=True)
class Origin:
    """One ``allowed_hosts`` entry: ``scheme://host[:port]``.

    >>> Origin.parse("https://API.example.com")
    Origin(scheme='https', host='api.example.com', port=443)
    >>> Origin.parse("http://127.0.0.1:8080").port
    8080
    """

    scheme: str
    host: str
    """Lower case; an IPv6 literal without brackets; IDNA (punycode) for non-ASCII names."""
    port: int

    @classmethod
    def parse(cls, text: object) -> Origin:
        """Parse one entry; ValueError with a message fit for the user."""
        if not isinstance(text, str):
            raise ValueError(f"expected an origin such as 'https://api.example.com', got {text!r}")
        parts = urlsplit(text.strip())
        if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
            raise ValueError(
                f"{text!r} is not an origin: expected http:// or https://, a host and an "
                "optional port, such as 'https://api.example.com' or 'http://127.0.0.1:8080'"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(
                f"{text!r}: an allowed host is an origin (scheme, host, optional port); "
                "paths, queries and user names cannot be restricted here"
            )
        try:
            host, port = _host_and_port(parts)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        return cls(parts.scheme, host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS[self.scheme] == self.port
        return f"{self.scheme}://{host}" + ("" if default else f":{self.port}")

    @property
    def names_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The IP address this entry names literally, if it does."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def admits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether a connection to ``address`` may serve this origin (the SSRF guard)."""
        if not is_special_address(address):
            return True
        named = self.names_address
        return named is not None and _unmapped(named) == _unmapped(address)


def _host_and_port(parts: SplitResult) -> tuple[str, int]:
    try:
        port = parts.port
    except ValueError:
        raise ValueError("invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError("no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("invalid host name") from None
    if port == 0:
        raise ValueError("invalid port 0")
    return host.rstrip(".") or host, port or _DEFAULT_PORTS[parts.scheme]


def _unmapped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address inside an IPv4-mapped, -compatible or NAT64 IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & _U32)
    return address


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_special_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, link-local, unspecified, multicast, broadcast or cloud metadata.

    Private networks (10/8, 192.168/16, fc00::/7, ...) are not special: an internal
    API on one is a legitimate destination once its origin is allowed.

    >>> is_special_address(ipaddress.ip_address("169.254.169.254"))
    True
    >>> is_special_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    True
    >>> is_special_address(ipaddress.ip_address("10.1.2.3"))
    False
    """
    address = _unmapped(address)
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address in METADATA_ADDRESSES
        or (isinstance(address, ipaddress.IPv4Address) and address in _ZERO_NET)
        or address == ipaddress.IPv4Address("255.255.255.255")
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


_ZERO_NET = ipaddress.ip_network("0.0.0.0/8")


def parse_allowed_hosts(value: object) -> tuple[Origin, ...]:
    """``allowed_hosts`` from modules.toml: a list of origins (empty: deny all)."""
    if not isinstance(value, list):
        raise ValueError(
            f'expected a list of origins such as ["https://api.example.com"], got {value!r}'
        )
    origins = tuple(Origin.parse(item) for item in value)
    return tuple(dict.fromkeys(origins))


def parse_max_concurrency(value: object) -> int:
    """``http_max_concurrency``: a positive integer, at most :data:`MAX_HANDLES`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    if value > MAX_HANDLES:
        raise ValueError(
            f"{value} is above wagi's limit of {MAX_HANDLES} responses open at once per run"
        )
    return value


@dataclass(frozen=True)
class OutboundPolicy:
    """What one route's module may do over HTTP; built once at start-up."""

    allowed: tuple[Origin, ...] = ()
    """Origins the module may reach; empty denies everything."""
    max_concurrency: int | None = None
    """``http_max_concurrency``: responses open at once (``None``: :data:`MAX_HANDLES`)."""
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @property
    def max_open(self) -> int:
        return min(self.max_concurrency or MAX_HANDLES, MAX_HANDLES)

    def origin_for(self, scheme: str, host: str, port: int) -> Origin | None:
        for origin in self.allowed:
            if origin.scheme == scheme and origin.host == host and origin.port == port:
                return origin
        return None


DENY_ALL = OutboundPolicy()


# -- the client: one per worker process -----------------------------------------


class _Reaper:
    """Shuts sockets down when their run's deadline passes (one thread per process).

    A socket timeout bounds each system call, not a whole request: a server that
    sends a byte just before each timeout would hold a module for ever. Shutting
    the socket down ends whatever call is blocked on it at once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, tuple[float, list[socket.socket]]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, key: int, deadline: float, sock: socket.socket) -> None:
        with self._cond:
            entry = self._watched.get(key)
            if entry is None:
                entry = self._watched[key] = (deadline, [])
                heapq.heappush(self._heap, (deadline, key))
                self._cond.notify()
            if not any(s is sock for s in entry[1]):
                entry[1].append(sock)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="wagi-outbound-reaper", daemon=True
                )
                self._thread.start()

    def forget(self, key: int) -> None:
        with self._cond:
            self._watched.pop(key, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._watched:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, key = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                _, socks = self._watched.pop(key, (0.0, []))
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)


_current = threading.local()
"""The session whose request this thread is making (read by the connection classes)."""


def _watch_current(sock: socket.socket | None) -> None:
    session: OutboundSession | None = getattr(_current, "session", None)
    if session is not None and sock is not None:
        session._watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch_current(sock)  # before TLS: a stalled handshake is cut short too
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_current(self.sock)  # a kept-alive connection from an earlier run
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch_current(sock)
        return sock

    def connect(self) -> None:
        super().connect()
        _watch_current(self.sock)  # the TLS socket that replaced the plain one

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_current(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class OutboundClient:
    """The worker's HTTP machinery: a connection pool, a resolver, a reaper.

    Made lazily by :func:`worker_client` in the process that uses it (never in the
    gunicorn master: threads and sockets do not survive a fork).
    """

    def __init__(self) -> None:
        # One TLS context, its trust store read now: a runner thread behind the kernel wall
        # (wagi.execution.wall) could not read it per connection, as urllib3 otherwise does.
        tls = create_urllib3_context()
        tls.load_default_certs()
        self.pool = urllib3.PoolManager(
            num_pools=32, maxsize=MAX_HANDLES, block=False, retries=False, ssl_context=tls
        )
        self.pool.pool_classes_by_scheme = {  # type: ignore[assignment]
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }
        self.reaper = _Reaper()
        # getaddrinfo cannot be interrupted; a thread lets a run stop waiting for it.
        self._resolver = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="wagi-resolve"
        )

    def resolve(
        self, host: str, port: int, timeout: float
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Every address of ``host``, in the resolver's order; OSError if none."""
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        future = self._resolver.submit(
            socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        try:
            infos = future.result(timeout=max(timeout, 0.0))
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"resolving {host} took too long") from None
        addresses = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OSError(f"{host} has no address")
        return addresses


_client: tuple[int, OutboundClient] | None = None
_client_lock = threading.Lock()


def worker_client() -> OutboundClient:
    """This process's :class:`OutboundClient` (a new one after a fork)."""
    global _client
    pid = os.getpid()
    with _client_lock:
        if _client is None or _client[0] != pid:
            _client = (pid, OutboundClient())
        return _client[1]


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
            function(self, memory, *(a & _U32 for a in args))
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
            _current.session = self
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
                _current.session = None
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
        if scheme not in _DEFAULT_PORTS or any(c.isspace() or ord(c) < 32 for c in url):
            raise ValueError(url)
        host, port = _host_and_port(parts)
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
