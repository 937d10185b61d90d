"""gunicorn settings for ``gunicorn wagi.wsgi:app`` run from this directory.

The settings themselves live in the package (``wagi.gunicorn_conf``, which re-exports
``wagi/server/gunicorn_hooks.py``) so that ``wagi serve`` uses the same ones wherever wagi
is installed.
"""

from wagi.gunicorn_conf import *  # noqa: F403
