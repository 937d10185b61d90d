"""gunicorn settings and hooks for wagi, loaded as :mod:`wagi.gunicorn_conf` (``wagi serve``,
and ``gunicorn.conf.py`` at the top of the repository).

Modules are CPU-bound and a sync worker runs one at a time, so the pool is
sized to the cores; gunicorn's own timeout is a backstop well above wagi's
per-module timeout (which answers 504 itself).

The hooks keep engines out of the master (docs/engines.md, 'Fork safety'): ``on_starting``
(and ``on_reload``, for SIGHUP) checks the configuration and compiles every
module in a separate, freshly started process (``wagi check``), filling the
shared artifact cache and pulling modules from OCI registries;
``post_worker_init`` builds each worker's engine and routing table from it. The
digests the check resolved OCI tags to reach the workers spawned next through
``WAGI_OCI_PINS`` in the master's environment, so they load exactly the bytes
that were checked, and a refused reload leaves them as they were.

With ``--log-format json`` (``WAGI_LOG_FORMAT=json``) gunicorn's own lines are
JSON too (:class:`wagi.observability.logformat.GunicornLogger`). With ``--metrics-bind``
the master also keeps the metrics directory and the process serving
``/metrics`` (:mod:`wagi.observability.metrics`): ``on_starting`` starts them, ``pre_fork``
and ``child_exit`` count workers, ``on_exit`` stops them.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wagi.observability.metrics import MetricsServer

__all__ = [  # what gunicorn reads: its settings, then its hooks (wagi.gunicorn_conf re-exports)
    "accesslog",
    "bind",
    "child_exit",
    "control_socket_disable",
    "errorlog",
    "forwarded_allow_ips",
    "graceful_timeout",
    "keepalive",
    "logger_class",
    "loglevel",
    "on_exit",
    "on_reload",
    "on_starting",
    "post_worker_init",
    "pre_fork",
    "secure_scheme_headers",
    "ssl_context",
    "timeout",
    "worker_class",
    "workers",
]

bind = os.environ.get("WAGI_BIND", "127.0.0.1:3000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "sync"
timeout = 120
graceful_timeout = 10
keepalive = 5
# Only --trusted-proxy-hops decides whom to believe about the scheme and client address.
secure_scheme_headers: dict[str, str] = {}
forwarded_allow_ips = "127.0.0.1,::1"
# No access log by default (gunicorn's own default): in the deployment the docs describe,
# nginx logs every request already, and gunicorn's line costs a worker about 28 µs of CPU
# per request (docs/performance.md). `--access-logfile -` turns it on.
accesslog = None
errorlog = "-"
loglevel = "info"
# gunicorn's own logger, which writes JSON lines with --log-format json.
logger_class = "wagi.observability.logformat.GunicornLogger"
# gunicorn 24+ opens a control socket in $HOME by default; several wagi servers on one
# machine would fight over it.
control_socket_disable = True


_metrics_server: MetricsServer | None = None


def on_starting(server: Any) -> None:
    """Refuse to start on any configuration error; start serving metrics if asked to."""
    problem = check_configuration(server)
    if problem:
        server.log.error("wagi cannot start: %s", problem)
        sys.exit(1)
    from wagi.config import settings as wagi_settings

    bind = wagi_settings.load().metrics_bind
    if bind:
        from wagi.observability.metrics import MetricsServer, MetricsUnavailable

        global _metrics_server
        try:
            _metrics_server = MetricsServer(bind)
        except MetricsUnavailable as exc:
            server.log.error("wagi cannot start: %s", exc)
            sys.exit(1)
        server.log.info("wagi: metrics at http://%s/metrics", bind)


def pre_fork(server: Any, worker: Any) -> None:
    if _metrics_server is not None:
        _metrics_server.worker_started()


def child_exit(server: Any, worker: Any) -> None:
    if _metrics_server is not None:
        _metrics_server.worker_exited(worker.pid)


def on_exit(server: Any) -> None:
    global _metrics_server
    if _metrics_server is not None:
        _metrics_server.close()
        _metrics_server = None


def on_reload(server: Any) -> None:
    """On SIGHUP, refuse a configuration that no longer checks: the old workers keep serving.

    gunicorn would start new workers that fail to boot and then stop the whole
    server; instead, the spawns of this one reload are skipped, so the workers
    built from the last good configuration go on serving.

    Why this replaces the arbiter's ``spawn_worker`` for one reload, and no
    supported hook does it (gunicorn 27.0.1, ``Arbiter.reload``): the reload
    calls ``on_reload``, ignores its return value, then calls ``spawn_worker``
    once per configured worker and retires the old workers. Raising from
    ``on_reload`` escapes the arbiter's signal handling and stops the master;
    ``pre_fork`` runs in the same loop but cannot cancel a fork; a new worker
    that fails in ``post_worker_init`` makes gunicorn stop every worker
    (``WorkerBootError`` -> ``HaltServer``). The only way to keep the old workers
    is to not spawn new ones; ``test_reload.py`` and ``test_cli.py`` pin this.
    """
    problem = check_configuration(server)
    if not problem:
        return
    server.log.error(
        "wagi: reload refused, the workers keep the previous configuration: %s", problem
    )
    remaining = server.cfg.workers

    def skip_spawn() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining <= 0:
            del server.spawn_worker  # the arbiter's own method again

    server.spawn_worker = skip_spawn


def check_configuration(server: Any) -> str | None:
    """Check, pull and precompile in a fresh helper process (``wagi check``); the problem, if any.

    The helper also checks gunicorn's worker class and threads against the engine
    (:func:`wagi.execution.engine_choice.worker_problem`), and warns about gunicorn's own TLS
    with an engine whose timeouts need the watchdog: the master imports no engine package. When the
    configuration checks, the OCI pins it resolved become the master's ``WAGI_OCI_PINS``,
    which the workers spawned from now on inherit.
    """
    from wagi.config.sources import PINS_ENV

    cfg = server.cfg
    with tempfile.TemporaryDirectory(prefix="wagi-check-") as tmp:
        pins_file = Path(tmp) / "pins.json"
        result = subprocess.run(
            [
                *(sys.executable, "-m", "wagi", "check", "--quiet", "--pins-file", str(pins_file)),
                *("--worker-class", cfg.worker_class_str, "--threads", str(cfg.threads)),
                *(("--tls",) if cfg.is_ssl else ()),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        pins = pins_file.read_text() if result.returncode == 0 else ""
    if result.returncode != 0:
        return "\n" + (result.stderr or result.stdout).strip()
    for line in result.stdout.strip().splitlines():
        if line.lstrip().startswith("warning: "):
            server.log.warning("wagi: %s", line.strip())
        else:
            server.log.info("%s", line)
    problem = timeout_problem(server.cfg.timeout)
    if problem is None:
        os.environ[PINS_ENV] = pins
    return problem


def timeout_problem(worker_timeout: float) -> str | None:
    """gunicorn must not kill a worker for silence before wagi answers 504 for its module."""
    from wagi.config import load_config
    from wagi.config import settings as wagi_settings

    server_settings = wagi_settings.load()
    config = load_config(server_settings.config)
    longest = max([server_settings.timeout] + [m.timeout for m in config.modules if m.timeout])
    if longest < worker_timeout:
        return None
    return (
        f"a module may run for {longest:g}s but gunicorn's worker timeout is {worker_timeout:g}s; "
        f"raise gunicorn's worker timeout above it (-t {int(longest) + 30}; with wagi serve, "
        "--timeout is the module timeout) or lower the module timeouts"
    )


def post_worker_init(worker: Any) -> None:
    """Create this worker's engine and routing table before it accepts a request; from
    then on, a helper process that dies (the watchdog) takes the worker out at once.

    Where the engine runs modules behind one wall for the whole worker, building it
    (:func:`wagi.server.worker.build_worker`) ends by confining it
    (:mod:`wagi.execution.wall`): what it still needs from the file system afterwards is
    opened first. TLS: the certificate and key are read once,
    here (:func:`ssl_context`), never again, and the wall never grants them. Reopening log
    files (SIGUSR1) needs a new worker: see :func:`_replace_on_usr1`.
    """
    app = worker.wsgi
    start = getattr(app, "start", None)
    if start is None:
        return
    cfg = worker.cfg
    secrets = [Path(p) for p in (cfg.certfile, cfg.keyfile, cfg.ca_certs) if p]
    if cfg.is_ssl:
        from gunicorn import sock

        sock.ssl_context(cfg)  # read the certificate and key now, before the wall
    built = start(secrets).worker
    from wagi.server.health import notice_dead_children

    notice_dead_children(worker, built.health)
    if built.sites.confined_here is not None:
        _replace_on_usr1(worker)


_ssl_contexts: dict[int, Any] = {}


def ssl_context(config: Any, default_ssl_context_factory: Any) -> Any:
    """gunicorn's TLS context, made once per worker instead of once per connection: a
    confined worker cannot read the key again (and reading it per connection costs)."""
    pid = os.getpid()
    context = _ssl_contexts.get(pid)
    if context is None:
        context = _ssl_contexts[pid] = default_ssl_context_factory()
    return context


def _replace_on_usr1(worker: Any) -> None:
    """A confined worker cannot open its log files again (their folder is outside its
    wall): on SIGUSR1 (reopen the logs) it finishes its request and exits, and gunicorn's
    master, which reopened its own files, starts a new worker that opens them afresh."""

    def handle_usr1(sig: int, frame: Any) -> None:
        worker.alive = False

    worker.handle_usr1 = handle_usr1
    import signal

    signal.signal(signal.SIGUSR1, handle_usr1)
