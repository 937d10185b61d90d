"""The object behind ``wagi.wsgi:app``, the application gunicorn serves.

:func:`create_app` reads the ``WAGI_*`` settings and parses ``modules.toml`` (cheap, and
it fails fast), but creates no engine: with ``--preload`` it runs in the gunicorn master,
which must never compile. The engine, the compiled modules and the routing table are
created in each worker (:meth:`WagiApp.start`), by the ``post_worker_init`` hook of
``gunicorn.conf.py`` or at the first request otherwise. Modules from an OCI registry are
found in the cache, never pulled here: ``wagi check`` pulled them, and the master passed
on the digests its tags resolved to (:mod:`wagi.config.sources`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wagi.config import Config, load_config
from wagi.config import settings as wagi_settings
from wagi.config.sources import pins_from_environ, resolve_modules
from wagi.server.gateway import Gateway
from wagi.server.worker import build_worker

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class WagiApp:
    """A WSGI callable that builds its worker (:func:`~wagi.server.worker.build_worker`)
    and :class:`~wagi.server.gateway.Gateway` in the process that serves."""

    def __init__(self, settings: wagi_settings.ServerSettings, config: Config) -> None:
        self.settings = settings
        self.config = config
        self.gateway: Gateway | None = None

    def start(self, secrets: Sequence[Path] = ()) -> Gateway:
        """Build this worker's gateway (once); ``secrets`` are files its wall never grants."""
        if self.gateway is None:
            gunicorn_log = logging.getLogger("gunicorn.error")
            wagi_log = logging.getLogger("wagi")
            if gunicorn_log.handlers and not wagi_log.handlers:
                wagi_log.handlers = gunicorn_log.handlers
                wagi_log.setLevel(gunicorn_log.level)
                wagi_log.propagate = False
            config = resolve_modules(self.config, self.settings.cache_dir, pins_from_environ())
            worker = build_worker(self.settings, config, serving=True, secrets=secrets)
            self.gateway = Gateway(worker)
        return self.gateway

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.start()(environ, start_response)


def create_app() -> WagiApp:
    settings = wagi_settings.load()
    return WagiApp(settings, load_config(settings.config))
