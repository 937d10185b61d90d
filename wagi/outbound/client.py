"""The worker's HTTP client for outbound requests: urllib3, a resolver, and a reaper thread.

One :class:`urllib3.PoolManager` per worker process (:func:`worker_client`), reused across
requests (keep-alive), that can be pointed at a checked IP address while it still verifies
TLS against the host name (``server_hostname``, ``assert_hostname``), never reads proxy
settings from the environment, and leaves redirects to :mod:`wagi.outbound.abi`. The reaper
shuts a socket down when its run's deadline passes, so even a server that drips one byte at
a time cannot hold a module past it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import ipaddress
import os
import socket
import threading
import time
from typing import Any, Protocol

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.ssl_ import create_urllib3_context

from wagi.outbound.policy import MAX_HANDLES


class Watcher(Protocol):
    """What a run gives the connections it opens (an :class:`~wagi.outbound.abi.OutboundSession`):
    each new or reused socket is watched until the run's deadline."""

    def _watch(self, sock: socket.socket) -> None: ...


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


current = threading.local()
"""The run whose request this thread is making (``current.session``, a :class:`Watcher`,
read by the connection classes)."""


def _watch_current(sock: socket.socket | None) -> None:
    session: Watcher | None = getattr(current, "session", None)
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
