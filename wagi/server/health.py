"""Whether this worker can still run modules, and having it replaced when it cannot.

A worker whose timeout watchdog died, or whose engine is broken, can no longer
serve modules. It must not go on answering errors while ``/healthz`` says OK.
:meth:`WorkerHealth.unfit` records why, logs it once, and (when serving under
gunicorn) sends the worker process ``SIGTERM``: gunicorn's graceful stop of one
worker, which finishes the request in hand, exits, and lets the arbiter start a
fresh worker in its place. Until it exits, :meth:`WorkerHealth.problem` tells the
gateway to answer ``503`` to ``/healthz`` and to module requests. The run sites say when
a run finds the worker unfit (:class:`~wagi.execution.sites.WorkerUnfit`); the gateway
records it here.

A helper process that dies (the watchdog, to an OOM kill) is noticed at once, not
when a request meets it: :func:`notice_dead_children` checks on ``SIGCHLD``. gunicorn's
worker wakes from its wait for connections on any signal (its wakeup fd), and its
loop accepts nothing once ``worker.alive`` is false, so the worker goes before it
accepts another request.

Example::

    health = WorkerHealth(replace=True)
    health.watch(lambda: engine.broken)        # a check returns "" while all is well
    if problem := health.problem():
        return error_response(503, ...)
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("wagi")


class WorkerHealth:
    """One worker's fitness to run modules: checks, and the one-way switch to unfit."""

    def __init__(self, *, replace: bool) -> None:
        """``replace``: end this process (gracefully) once unfit; only under gunicorn."""
        self._replace = replace
        self._checks: list[Callable[[], str]] = []
        self._reason = ""
        self._lock = threading.Lock()

    def watch(self, check: Callable[[], str]) -> None:
        """Consult ``check`` on every :meth:`problem`: it returns why the worker is unfit,
        or ``""``. It must be cheap (a flag, a ``waitpid``): it runs on every request."""
        self._checks.append(check)

    def problem(self) -> str:
        """Why this worker can no longer run modules, or ``""`` while it can."""
        if not self._reason:
            for check in self._checks:
                reason = check()
                if reason:
                    self.unfit(reason)
                    break
        return self._reason

    def unfit(self, reason: str) -> None:
        """Mark this worker unfit for good: log ``reason`` once and have it replaced."""
        with self._lock:
            if self._reason:
                return
            self._reason = reason
        pid = os.getpid()
        if not self._replace:
            logger.error("wagi: this process can no longer run modules: %s", reason)
            return
        logger.error(
            "wagi: worker %d can no longer run modules: %s; it stops after the requests in "
            "hand and gunicorn starts a new one",
            pid,
            reason,
        )
        os.kill(pid, signal.SIGTERM)


def notice_dead_children(worker: Any, health: WorkerHealth) -> None:
    """Check ``health`` whenever a child process of this gunicorn ``worker`` ends, and stop
    the worker from accepting requests once it is unfit. From the main thread, at start."""

    def on_child(signum: int, frame: object) -> None:
        # A waitpid per helper (Popen.poll, which never blocks, even here).
        if worker.alive and health.problem():
            worker.alive = False

    signal.signal(signal.SIGCHLD, on_child)
