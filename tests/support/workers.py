"""gunicorn's worker processes as the tests see them, and waiting for a condition."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from .servers import Server


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that are still there (zombies included)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def worker_pids(server: Server) -> set[int]:
    """The workers ``server``'s master has now."""
    return set(children(server.process.pid))


def booted_workers(log: str) -> list[int]:
    """Every worker a gunicorn log says was booted, in order, the ones since gone included."""
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", log)]


def exited_workers(log: str) -> set[int]:
    """The workers a gunicorn log says have exited."""
    return {int(pid) for pid in re.findall(r"Worker exiting \(pid: (\d+)\)", log)}


def dead(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def wait_for(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
