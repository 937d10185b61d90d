"""The epoch ticker: how a timeout interrupts a module on the wasmtime engine.

A store whose epoch deadline passes calls its epoch-deadline callback
(:meth:`~wagi.engines.wasmtime.run._Run.on_tick`, which checks the run's deadline); the
ticker is what makes the epoch pass, one thread per engine.
"""

from __future__ import annotations

import threading
import time

import wasmtime

_DEFAULT_TICK = 0.01
"""Seconds between epoch ticks while a timed run is active. A timeout fires between
``timeout`` and ``timeout + 2 * tick`` after the run starts."""

_TICKER_LINGER = 2.0
"""Seconds the ticker thread waits for another timed run before it exits."""


class _EpochTicker:
    """Advances one engine's epoch every ``tick`` seconds while timed runs happen.

    One thread per engine, started by the first run and ended after ``_TICKER_LINGER``
    seconds without one. A run only counts itself in and out under a lock: the ticker is
    never woken for it (waking a thread per request costs more than the request's Python),
    so it keeps ticking through the short gaps between runs, which costs nothing to a run.
    """

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine
        self._tick = tick
        self._lock = threading.Lock()
        self._active = 0
        self._last_run = 0.0
        self._thread: threading.Thread | None = None

    def start_run(self) -> None:
        with self._lock:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="wagi-wasmtime-epoch", daemon=True
                )
                self._thread.start()

    def end_run(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._last_run = time.monotonic()

    def _loop(self) -> None:
        next_tick = time.monotonic() + self._tick
        while True:
            remaining = next_tick - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            self._engine.increment_epoch()
            now = time.monotonic()
            # A late ticker skips ticks rather than bunching them: a deadline may come a
            # little late, never early.
            next_tick = max(next_tick, now) + self._tick
            with self._lock:
                if self._active == 0 and now - self._last_run > _TICKER_LINGER:
                    self._thread = None
                    return
