"""Where module runs happen: on threads of their own, one pool per route group.

A module runs on a runner thread, never on the thread that serves HTTP, for
two reasons:

- streaming: while the module writes to a pipe, the serving thread reads the
  pipe and sends the body to the client;
- confinement: a kernel wall (Landlock) applies to one thread and cannot be
  undone, so each group of routes gets threads that can reach only that
  group's volumes (see ``on_start``), and nothing of the serving thread's.

A pool keeps idle threads for reuse and starts another one only when all are
busy (a threaded gunicorn worker serves several requests at once)::

    pool = RunnerPool("route /hello")
    job = pool.submit(lambda: 6 * 7)
    assert job.result() == 42

Handing a job to an idle thread and back costs about 10 µs.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Job(Generic[T]):
    """One call on a runner thread; :meth:`result` waits for it."""

    __slots__ = ("_done", "_error", "_value", "close_fd", "function")

    def __init__(self, function: Callable[[], T], close_fd: int | None) -> None:
        self.function = function
        self.close_fd = close_fd
        """Closed by the runner once the result is set: the reader of that pipe sees EOF
        exactly when the result is ready."""
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self.function()
        except BaseException as exc:  # handed to the waiting thread, raised there
            self._error = exc
        finally:
            self._done.set()
            if self.close_fd is not None:
                os.close(self.close_fd)

    def result(self, timeout: float | None = None) -> T:
        if not self._done.wait(timeout):
            raise TimeoutError("the run has not finished")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class _Runner:
    def __init__(self, pool: RunnerPool) -> None:
        self.pool = pool
        self.jobs: queue.SimpleQueue[Job[object] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.loop, name=pool.name, daemon=True)
        self.started = threading.Event()
        self.start_error: BaseException | None = None

    def loop(self) -> None:
        try:
            if self.pool.on_start is not None:
                self.pool.on_start()
        except BaseException as exc:
            self.start_error = exc
        self.started.set()
        if self.start_error is not None:
            return
        while (job := self.jobs.get()) is not None:
            job.run()
            self.pool.release(self)


class RunnerPool:
    """Threads that run the jobs of one route group.

    ``on_start`` runs first on every new thread (say, to confine it); if it
    fails, :meth:`submit` raises its exception and no job ever runs unconfined.
    """

    def __init__(self, name: str, on_start: Callable[[], None] | None = None) -> None:
        self.name = name
        self.on_start = on_start
        self._idle: list[_Runner] = []
        self._lock = threading.Lock()
        self.threads = 0

    def submit(self, function: Callable[[], T], close_fd: int | None = None) -> Job[T]:
        """Run ``function`` on an idle thread (a new one if none is idle)."""
        with self._lock:
            runner = self._idle.pop() if self._idle else None
        if runner is None:
            runner = _Runner(self)
            runner.thread.start()
            runner.started.wait()
            if runner.start_error is not None:
                if close_fd is not None:
                    os.close(close_fd)
                raise runner.start_error
            with self._lock:
                self.threads += 1
        job = Job(function, close_fd)
        runner.jobs.put(job)  # type: ignore[arg-type]
        return job

    def release(self, runner: _Runner) -> None:
        with self._lock:
            self._idle.append(runner)

    def close(self) -> None:
        """Let idle threads end (busy ones end after their job)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for runner in idle:
            runner.jobs.put(None)
