"""gunicorn settings for every gunicorn the benchmarks start: those of ``gunicorn.conf.py``.

``bench/run.py`` and ``bench/compare.py`` serve wagi *and* the plain WSGI
contender with ``-c bench/gunicorn.conf.py``, so both get identical settings
(sync workers, timeouts, keep-alive, logging) and the same start-up hooks. The
only addition is a switch for the access log, so that a comparison can turn it
off for every contender (nginx's too) rather than for some:

    WAGI_BENCH_ACCESS_LOG=off   # gunicorn writes no access log line
"""

import os

from wagi.gunicorn_conf import *  # noqa: F403

if os.environ.get("WAGI_BENCH_ACCESS_LOG", "on") == "off":
    accesslog = None
