"""Prometheus metrics (``--metrics-bind HOST:PORT``), in prometheus-client's multiprocess mode.

gunicorn's workers are separate processes, so each one writes its numbers to
files in a directory that prometheus-client reads back and adds up. The
gunicorn hooks (:mod:`wagi.gunicorn_conf`) do the rest, in the master:

- ``on_starting``: :class:`MetricsServer` makes a fresh directory, sets
  ``PROMETHEUS_MULTIPROC_DIR`` (before any process imports prometheus_client,
  which reads it once, at import) and starts the process that serves
  ``/metrics`` on its own port: ``python -m wagi.observability.metrics HOST:PORT``, freshly
  started (never a bare fork: docs/engines.md, 'Fork safety'), only reading that directory,
  and ending when the master does (its stdin is a pipe from the master);
- ``pre_fork`` and ``child_exit``: workers started and ended (a restart is one
  of each), and ``mark_process_dead`` as the multiprocess docs ask;
- ``on_exit``: stop that process and remove the directory.

A worker's :class:`Metrics` counts its requests (reported by
:class:`wagi.observability.observe.Observer` when a request is over) and its compiled-module
cache lookups. Nothing of this reaches the module routes: ``/metrics`` on the
application's port is just another path.

The metrics, all with the ``wagi_`` prefix:

=====================================  ==========================================================
``requests_total{route,status}``       requests answered (``route=""``: none matched)
``request_duration_seconds{route}``    histogram: arrival to the last body byte
``module_run_duration_seconds{route}`` histogram: the engine running the module
``module_endings_total{route,ending}`` returned, exited, trapped, timed_out, output_too_large,
                                       cancelled
``module_cache_lookups_total``         ``{engine,result}``: compiled modules loaded from the
                                       artifact cache (hit) or compiled (miss)
``worker_starts_total``                workers started by the master (restarts included)
``worker_exits_total``                 workers ended (by gunicorn, a crash or the watchdog)
=====================================  ==========================================================
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

from wagi.config.settings import bind_address
from wagi.engines.base import Ending

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Seconds: a module run takes from about 75 µs to its timeout."""


class MetricsUnavailable(Exception):
    """Metrics were asked for but cannot be served; the message says why."""


class Metrics:
    """One process's metrics; their values go to the multiprocess directory.

    Create it only in a process started under :class:`MetricsServer` (a gunicorn
    worker or master with wagi's hooks): elsewhere the numbers would be counted
    and never served, so this refuses.
    """

    def __init__(self) -> None:
        if not os.environ.get(MULTIPROC_ENV):
            raise MetricsUnavailable(
                "--metrics-bind needs wagi's gunicorn settings (wagi serve, or gunicorn -c "
                "gunicorn.conf.py): they prepare the metrics directory and serve /metrics"
            )
        # Imported here, not at the top: prometheus_client chooses its multiprocess mode
        # when first imported, which must come after the master has set MULTIPROC_ENV.
        from prometheus_client import Counter, Histogram

        # registry=None: in multiprocess mode the numbers are read back from the files
        # (MultiProcessCollector); nothing is collected from this process's registry.
        self.requests: Counter = Counter(
            "wagi_requests", "Requests answered.", ["route", "status"], registry=None
        )
        self.duration: Histogram = Histogram(
            "wagi_request_duration_seconds",
            "Seconds from a request's arrival to the last byte of its response.",
            ["route"],
            buckets=BUCKETS,
            registry=None,
        )
        self.run_duration: Histogram = Histogram(
            "wagi_module_run_duration_seconds",
            "Seconds the engine ran the module.",
            ["route"],
            buckets=BUCKETS,
            registry=None,
        )
        self.endings: Counter = Counter(
            "wagi_module_endings", "How module runs ended.", ["route", "ending"], registry=None
        )
        self.cache_lookups: Counter = Counter(
            "wagi_module_cache_lookups",
            "Compiled modules loaded from the artifact cache (hit) or compiled (miss).",
            ["engine", "result"],
            registry=None,
        )
        self.worker_starts: Counter = Counter(
            "wagi_worker_starts", "Workers started by the gunicorn master.", registry=None
        )
        self.worker_exits: Counter = Counter(
            "wagi_worker_exits", "Workers that ended, for any reason.", registry=None
        )

        self._routes: dict[str | None, _RouteMetrics] = {}

    def request_ended(
        self,
        route: str | None,
        status: int,
        seconds: float,
        ending: Ending | None,
        run_seconds: float | None,
    ) -> None:
        """Count one finished request (from :class:`wagi.observability.observe.Observer`)."""
        children = self._routes.get(route)
        if children is None:
            children = self._routes[route] = _RouteMetrics(self, route or "")
        children.ended(status, seconds, ending, run_seconds)

    def cache_lookup(self, engine: str, hit: bool) -> None:
        """An artifact-cache lookup (:class:`wagi.engines.cache.ArtifactCache`)."""
        self.cache_lookups.labels(engine, "hit" if hit else "miss").inc()


class _RouteMetrics:
    """One route's labelled metrics, looked up once: ``labels()`` costs more than counting."""

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.metrics = metrics
        self.route = route
        self.duration = metrics.duration.labels(route)
        self.run_duration = metrics.run_duration.labels(route)
        self.requests: dict[int, Counter] = {}
        self.endings: dict[Ending, Counter] = {}

    def ended(
        self, status: int, seconds: float, ending: Ending | None, run_seconds: float | None
    ) -> None:
        requests = self.requests.get(status)
        if requests is None:
            requests = self.requests[status] = self.metrics.requests.labels(self.route, str(status))
        requests.inc()
        self.duration.observe(seconds)
        if ending is not None:
            endings = self.endings.get(ending)
            if endings is None:
                endings = self.endings[ending] = self.metrics.endings.labels(
                    self.route, ending.name.lower()
                )
            endings.inc()
        if run_seconds is not None:
            self.run_duration.observe(run_seconds)


class MetricsServer:
    """The master's side: the multiprocess directory and the process serving ``/metrics``.

    Raises :class:`MetricsUnavailable` when ``bind`` cannot be listened on.
    """

    def __init__(self, bind: str) -> None:
        self.bind = bind
        self.directory = tempfile.mkdtemp(prefix="wagi-metrics-")
        # Inherited by the workers (and the exporter), each of which imports
        # prometheus_client after this.
        os.environ[MULTIPROC_ENV] = self.directory
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wagi.observability.metrics", bind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.process.stdout is not None
        answer = self.process.stdout.readline().decode(errors="replace").strip()
        self.process.stdout.close()
        if answer != "ready":
            self.close()
            raise MetricsUnavailable(
                f"--metrics-bind {bind}: {answer or 'the metrics server did not start'}"
            )
        self._metrics: Metrics | None = None

    @property
    def metrics(self) -> Metrics:
        if self._metrics is None:
            self._metrics = Metrics()
        return self._metrics

    def worker_started(self) -> None:
        self.metrics.worker_starts.inc()

    def worker_exited(self, pid: int) -> None:
        from prometheus_client import multiprocess

        self.metrics.worker_exits.inc()
        multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop serving and remove the directory."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # EOF: the exporter ends
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == self.directory:
            del os.environ[MULTIPROC_ENV]


def _serve(bind: str) -> int:
    """The exporter process: serve the directory's metrics until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the arbiter, not here
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        host, port = bind_address(bind)
        start_http_server(port, addr=host, registry=registry)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"cannot serve metrics there: {reason}", flush=True)
        return 1
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.buffer.read()  # returns when the master closes the pipe or is gone
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
