"""A last resort for engines that cannot interrupt a running module.

wasmer-python holds the GIL while a module runs and offers no way to stop it,
so no thread of the worker can act on a timeout. The watchdog is a separate,
freshly exec'd process (never a bare fork: docs/engines.md, 'Fork safety') that each worker
starts once. Before a run the worker hands it a duplicate of the client socket
and a deadline; after the run it takes them back. If the deadline passes first,
the watchdog answers the client on that socket and kills the worker; gunicorn's
arbiter then starts a fresh worker, so the timeout costs exactly one worker and
never another request.

The answer is the worker's own ``504`` response (built by the gateway, handed
over once at start). Over TLS (gunicorn's ``--certfile``) the watchdog cannot
speak: the session's keys live in the worker. It then closes the connection
without a byte, as gunicorn does when it kills a silent worker; the client sees
the connection end with no response (behind nginx, nginx answers 502).

If the watchdog itself dies (an OOM kill), :meth:`Watchdog.problem` says so and
:meth:`Watchdog.arm` raises :class:`WatchdogGone`: the worker can no longer
bound a module's time and must be replaced (:mod:`wagi.server.health`).

The worker never answers or logs that request, so the watchdog does: its log
line (a JSON object with ``--log-format json``) and, with ``--metrics-bind``,
the request's metrics (a 504, ending ``timed_out``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys


def tls_warning(engine: str) -> str:
    """The start-up warning for an engine that needs the watchdog behind gunicorn's own TLS.

    No design answers 504 there: the TLS session (keys, sequence numbers) lives in the
    worker, which is stuck in the module, and a record cannot be sealed ahead of time
    without sending it. Kernel TLS would let the watchdog write plaintext, but CPython 3.10
    (the only one wasmer runs on) cannot turn it on.
    """
    return (
        f"engine {engine} cannot interrupt a module and gunicorn serves TLS itself "
        "(--certfile): a module past its timeout ends its client's connection without an "
        "answer instead of a 504; terminate TLS in nginx in front of wagi "
        "(docs/deployment.md), or use --engine wasmtime"
    )


class WatchdogGone(Exception):
    """The watchdog process is gone; the message says how."""


class Watchdog:
    """The worker's side: :meth:`arm` before a run, :meth:`disarm` after it."""

    def __init__(self, timeout_answer: bytes, engine: str = "wasmer") -> None:
        """``timeout_answer``: the whole HTTP response to send a client past its deadline;
        ``engine``: the worker's engine, named in the watchdog's log line."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wagi.server.watchdog",
                str(theirs.fileno()),
                str(os.getpid()),
                engine,
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )
        theirs.close()
        self._sock.send(b"answer " + timeout_answer)

    def problem(self) -> str:
        """Why the watchdog cannot guard runs any more, or ``""`` (one ``waitpid``, no block)."""
        code = self._process.poll()
        if code is None:
            return ""
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        return f"its timeout watchdog (pid {self._process.pid}) is gone ({how})"

    def _gone(self) -> WatchdogGone:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=1)  # it closed its end: it is exiting or gone
        return WatchdogGone(self.problem() or "its timeout watchdog stopped answering")

    def arm(self, client: socket.socket, seconds: float, route: str, request_id: str = "") -> None:
        """Answer 504 on ``client`` and end this worker unless disarmed within ``seconds``.

        Raises :class:`WatchdogGone` if the watchdog is no longer there to do it.
        """
        mode = "close" if isinstance(client, ssl.SSLSocket) else "answer"
        message = f"arm {seconds} {mode} {request_id or '-'} {route}".encode()
        try:
            socket.send_fds(self._sock, [message], [client.fileno()])
        except OSError:
            raise self._gone() from None

    def disarm(self) -> None:
        """Take the socket back; returns once the watchdog has let go of it.

        Raises :class:`WatchdogGone` if the watchdog died during the run.
        """
        try:
            self._sock.send(b"disarm")
            reply = self._sock.recv(16)
        except OSError:
            raise self._gone() from None
        if not reply:
            raise self._gone()

    def close(self) -> None:
        self._sock.close()
        try:
            self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._process.kill()


def _serve(channel: socket.socket, worker_pid: int, engine: str) -> None:
    """The watchdog process: wait for arm/disarm messages until the worker goes away."""
    answer = b""
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(channel, 65536, 1)
        if not msg:
            return  # the worker is gone
        if msg.startswith(b"answer "):
            answer = msg[len(b"answer ") :]
            continue
        if not msg.startswith(b"arm ") or not fds:
            continue
        client = socket.socket(fileno=fds[0])
        _, seconds, mode, request_id, route = msg.decode().split(" ", 4)
        channel.settimeout(float(seconds))
        try:
            reply = channel.recv(64)
        except TimeoutError:
            reply = None
        channel.settimeout(None)
        if reply is None:
            reply = answer if mode == "answer" else b""
            if reply and request_id != "-":  # the worker echoes its request id; so does this
                head, _, body = reply.partition(b"\r\n\r\n")
                reply = head + f"\r\nX-Request-Id: {request_id}\r\n\r\n".encode() + body
            _end_connection(client, reply)
            os.kill(worker_pid, signal.SIGKILL)
            told = (
                "answered 504"
                if mode == "answer"
                else "closed the TLS connection without an answer (it cannot speak TLS)"
            )
            _report(route, float(seconds), request_id, worker_pid, engine, told)
            return
        client.close()
        if not reply:
            return
        channel.send(b"ok")


def _report(
    route: str, seconds: float, request_id: str, worker_pid: int, engine: str, told: str
) -> None:
    """The log line and metrics of a request the worker will never finish."""
    message = (
        f"wagi watchdog: [{route}] timed out after {seconds:g}s and the engine cannot "
        f"interrupt it: {told} and ended worker {worker_pid}; gunicorn starts a new one"
    )
    if os.environ.get("WAGI_LOG_FORMAT") == "json":
        import logging

        from wagi.observability.logformat import JsonFormatter

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
        from wagi.observability.metrics import Metrics

        Metrics().request_ended(route, 504, seconds, Ending.TIMED_OUT, seconds)


def _end_connection(client: socket.socket, answer: bytes) -> None:
    """Send ``answer`` (if any), then end the connection cleanly (FIN, not RST)."""
    try:
        if answer:
            client.sendall(answer)
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
