"""A last resort for engines that cannot interrupt a running module.

wasmer-python holds the GIL while a module runs and offers no way to stop it,
so no thread of the worker can act on a timeout. The watchdog is a separate,
freshly exec'd process (never a bare fork: see SPEC section 1) that each worker
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
bound a module's time and must be replaced (:mod:`wagi.worker_health`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys


class WatchdogGone(Exception):
    """The watchdog process is gone; the message says how."""


class Watchdog:
    """The worker's side: :meth:`arm` before a run, :meth:`disarm` after it."""

    def __init__(self, timeout_answer: bytes) -> None:
        """``timeout_answer``: the whole HTTP response to send a client past its deadline."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._process = subprocess.Popen(
            [sys.executable, "-m", "wagi.watchdog", str(theirs.fileno()), str(os.getpid())],
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

    def arm(self, client: socket.socket, seconds: float, route: str) -> None:
        """Answer 504 on ``client`` and end this worker unless disarmed within ``seconds``.

        Raises :class:`WatchdogGone` if the watchdog is no longer there to do it.
        """
        mode = "close" if isinstance(client, ssl.SSLSocket) else "answer"
        message = f"arm {seconds} {mode} {route}".encode()
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


def _serve(channel: socket.socket, worker_pid: int) -> None:
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
        _, seconds, mode, route = msg.decode().split(" ", 3)
        channel.settimeout(float(seconds))
        try:
            reply = channel.recv(64)
        except TimeoutError:
            reply = None
        channel.settimeout(None)
        if reply is None:
            _end_connection(client, answer if mode == "answer" else b"")
            os.kill(worker_pid, signal.SIGKILL)
            told = (
                "answered 504"
                if mode == "answer"
                else "closed the TLS connection without an answer (it cannot speak TLS)"
            )
            print(
                f"wagi watchdog: [{route}] timed out after {seconds}s and the engine cannot "
                f"interrupt it: {told} and ended worker {worker_pid}; gunicorn starts a new one",
                file=sys.stderr,
                flush=True,
            )
            return
        client.close()
        if not reply:
            return
        channel.send(b"ok")


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
        _serve(channel, int(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
