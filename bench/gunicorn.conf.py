"""gunicorn settings for every gunicorn the benchmarks start: those of ``gunicorn.conf.py``.

``bench/run.py`` and ``bench/compare.py`` serve wagi *and* the plain WSGI
contender with ``-c bench/gunicorn.conf.py``, so both get identical settings
(sync workers, timeouts, keep-alive, logging) and the same start-up hooks. The
one addition says where the access log goes, so that a comparison can turn it
off for every contender (nginx's too) rather than for some, and keep it apart
from the error log when it is on:

    WAGI_BENCH_ACCESS_LOG=off              # no access log line at all
    WAGI_BENCH_ACCESS_LOG=/tmp/access.log  # one line per request, to that file
"""

import os

from wagi.gunicorn_conf import *  # noqa: F403

_access_log = os.environ.get("WAGI_BENCH_ACCESS_LOG")
if _access_log == "off":
    accesslog = None
elif _access_log:
    accesslog = _access_log
