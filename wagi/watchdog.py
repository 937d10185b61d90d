"""A last resort for engines that cannot interrupt a running module.

wasmer-python holds the GIL while a module runs and offers no way to stop it,
so no thread of the worker can act on a timeout. The watchdog is a separate,
freshly exec'd process (never a bare fork: see SPEC section 1) that each worker
starts once. Before a run the worker hands it a duplicate of the client socket
and a deadline; after the run it takes them back. If the deadline passes first,
the watchdog answers the client ``504 Gateway Timeout`` on that socket and kills
the worker; gunicorn's arbiter then starts a fresh worker, so the timeout costs
exactly one worker and never another request.
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

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._process = subprocess.Popen(
            [sys.executable, "-m", "wagi.watchdog", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )
        theirs.close()

    def arm(self, client: socket.socket, seconds: float, route: str) -> None:
        """Answer 504 on ``client`` and end this worker unless disarmed within ``seconds``."""
        socket.send_fds(self._sock, [f"arm {seconds} {route}".encode()], [client.fileno()])

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


def _serve(channel: socket.socket, worker_pid: int) -> None:
    """The watchdog process: wait for arm/disarm messages until the worker goes away."""
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(channel, 4096, 1)
        if not msg:
            return  # the worker is gone
        if not msg.startswith(b"arm ") or not fds:
            continue
        client = socket.socket(fileno=fds[0])
        _, seconds, route = msg.decode().split(" ", 2)
        channel.settimeout(float(seconds))
        try:
            reply = channel.recv(64)
        except TimeoutError:
            reply = None
        channel.settimeout(None)
        if reply is None:
            _answer_timeout(client)
            os.kill(worker_pid, signal.SIGKILL)
            print(
                f"wagi watchdog: [{route}] timed out after {seconds}s and the engine cannot "
                f"interrupt it: answered 504 and ended worker {worker_pid}; gunicorn starts a "
                "new one",
                file=sys.stderr,
                flush=True,
            )
            return
        client.close()
        if not reply:
            return
        channel.send(b"ok")


def _answer_timeout(client: socket.socket) -> None:
    try:
        client.sendall(TIMEOUT_RESPONSE)
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
