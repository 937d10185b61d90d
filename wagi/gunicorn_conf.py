"""gunicorn's settings and hooks for wagi, by the name gunicorn is given.

``wagi serve`` loads this module (``-c python:wagi.gunicorn_conf``), and a project's own
``gunicorn.conf.py`` starts with ``from wagi.gunicorn_conf import *``. They live in
:mod:`wagi.server.gunicorn_hooks`; this module is the stable name for them.
"""

from wagi.server.gunicorn_hooks import *  # noqa: F403
from wagi.server.gunicorn_hooks import __all__ as __all__
