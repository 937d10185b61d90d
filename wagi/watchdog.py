"""A last resort for engines that cannot interrupt a running module.

wasmer-python holds the GIL while a module runs and offers no way to stop it,
so no thread of the worker can act on a timeout. The watchdog is a separate,
freshly exec'd process (never a bare fork: see SPEC section 1) that each worker
starts once. Before a run the worker hands it a duplicate of the client socket
and a deadline; after the run it takes them back. If the deadline passes first,
the watchdog answers the client ``504 Gateway Timeout`` on that socket and kills
the worker; gunicorn's arbiter then starts a fresh worker, so the timeout costs
exactly one worker and never another request.

The worker never answers or logs that request, so the watchdog does: its log
line (a JSON object with ``--log-format json``) and, with ``--metrics-bind``,
the request's metrics (a 504, ending ``timed_out``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys

TIMEOUT_RESPONSE = (
    b"HTTP/1.1 504 Gateway Timeout\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 42\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"504 Gateway Timeout: the module timed out\n"
)
assert len(TIMEOUT_RESPONSE.split(b"\r\n\r\n", 1)[1]) == 42


class Watchdog:
    """The worker's side: :meth:`arm` before a run, :meth:`disarm` after it."""

    def __init__(self, engine: str = "wasmer") -> None:
        """``engine``: the worker's engine, named in the watchdog's log line."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wagi.watchdog",
                str(theirs.fileno()),
                str(os.getpid()),
                engine,
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )
        theirs.close()

    def arm(self, client: socket.socket, seconds: float, route: str, request_id: str = "") -> None:
        """Answer 504 on ``client`` and end this worker unless disarmed within ``seconds``."""
        message = f"arm {seconds} {request_id or '-'} {route}"
        socket.send_fds(self._sock, [message.encode()], [client.fileno()])

    def disarm(self) -> None:
        """Take the socket back; returns once the watchdog has let go of it."""
        self._sock.send(b"disarm")
        self._sock.recv(16)

    def close(self) -> None:
        self._sock.close()
        try:
            self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._process.kill()


def _serve(channel: socket.socket, worker_pid: int, engine: str) -> None:
    """The watchdog process: wait for arm/disarm messages until the worker goes away."""
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(channel, 4096, 1)
        if not msg:
            return  # the worker is gone
        if not msg.startswith(b"arm ") or not fds:
            continue
        client = socket.socket(fileno=fds[0])
        _, seconds, request_id, route = msg.decode().split(" ", 3)
        channel.settimeout(float(seconds))
        try:
            reply = channel.recv(64)
        except TimeoutError:
            reply = None
        channel.settimeout(None)
        if reply is None:
            _answer_timeout(client, request_id)
            os.kill(worker_pid, signal.SIGKILL)
            _report(route, float(seconds), request_id, worker_pid, engine)
            return
        client.close()
        if not reply:
            return
        channel.send(b"ok")


def _report(route: str, seconds: float, request_id: str, worker_pid: int, engine: str) -> None:
    """The log line and metrics of a request the worker will never finish."""
    message = (
        f"wagi watchdog: [{route}] timed out after {seconds:g}s and the engine cannot "
        f"interrupt it: answered 504 and ended worker {worker_pid}; gunicorn starts a new one"
    )
    if os.environ.get("WAGI_LOG_FORMAT") == "json":
        import logging

        from wagi.logformat import JsonFormatter

        fields = {
            "request_id": None if request_id == "-" else request_id,
            "engine": engine,
            "route": route,
            "status": 504,
            "duration_ms": seconds * 1000,
            "run_ms": seconds * 1000,
            "ending": "timed_out",
        }
        record = logging.LogRecord("wagi", logging.ERROR, "", 0, message, (), None)
        record.__dict__.update(fields)
        message = JsonFormatter().format(record)
    print(message, file=sys.stderr, flush=True)
    if os.environ.get("WAGI_METRICS_BIND") and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from wagi.engines.base import Ending
        from wagi.metrics import Metrics

        Metrics().request_ended(route, 504, seconds, Ending.TIMED_OUT, seconds)


def _answer_timeout(client: socket.socket, request_id: str) -> None:
    response = TIMEOUT_RESPONSE
    if request_id != "-":  # the worker echoes its request id; so does its 504
        head, _, body = response.partition(b"\r\n\r\n")
        response = head + f"\r\nX-Request-Id: {request_id}\r\n\r\n".encode() + body
    try:
        client.sendall(response)
        client.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    client.close()


def main(argv: list[str]) -> None:
    channel = socket.socket(fileno=int(argv[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the arbiter, not here
    with contextlib.suppress(OSError, KeyboardInterrupt):
        _serve(channel, int(argv[1]), argv[2])


if __name__ == "__main__":
    main(sys.argv[1:])
