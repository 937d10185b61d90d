"""``wagi.wsgi:app``, the application gunicorn serves (``gunicorn wagi.wsgi:app``).

Importing this module reads the ``WAGI_*`` settings and parses ``modules.toml``
(cheap, and it fails fast), but creates no engine: with ``--preload`` the import
happens in the gunicorn master, which must never compile. Each worker builds its
own (:class:`~wagi.server.app.WagiApp`).
"""

from __future__ import annotations

from wagi.server.app import WagiApp, create_app

__all__ = ["WagiApp", "app", "create_app"]

app = create_app()
