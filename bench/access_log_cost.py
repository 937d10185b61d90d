#!/usr/bin/env python3
"""What one access-log line costs a gunicorn worker, in-process, without HTTP.

Usage::

    python bench/access_log_cost.py [--lines 20000]

It calls the access method of the logger a wagi worker uses
(``wagi.observability.logformat.GunicornLogger``, gunicorn's own ``Logger`` for the text format)
the way gunicorn's sync worker does after every response, with the WSGI environ
and headers of wrk's ``GET /hello``, and times it:

- **off**: ``accesslog = None``, gunicorn's default (the call returns at once);
- **text**: gunicorn's default line (combined log format) to a file;
- **json**: the same with ``--log-format json`` (``WAGI_LOG_FORMAT=json``);
- **floor**: the same text line made with one f-string and written with one
  ``os.write``: what a line costs without gunicorn's atoms and ``logging``.

Each in a fresh logger; the files are in a temporary directory. Compare the
figures with the CPU µs per request of a server (``bench/compare.py``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def environ() -> dict[str, Any]:
    """gunicorn's environ for wrk's ``GET /hello`` (engine_overhead's, with gunicorn's keys)."""
    from engine_overhead import hello_environ

    env = hello_environ()
    env.update({"RAW_URI": "/hello", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_USER_AGENT": "wrk"})
    return env


def make_logger(accesslog: str | None, json: bool) -> Any:
    from gunicorn.config import Config

    from wagi.observability.logformat import GunicornLogger

    if json:
        os.environ["WAGI_LOG_FORMAT"] = "json"
    else:
        os.environ.pop("WAGI_LOG_FORMAT", None)
    cfg = Config()
    cfg.set("accesslog", accesslog)
    cfg.set("errorlog", os.devnull)
    return GunicornLogger(cfg)


def per_line_us(lines: int, call: Any) -> tuple[float, float]:
    """Mean wall and CPU µs of ``call()``, over ``lines`` calls."""
    for _ in range(min(lines, 1000)):  # warm up
        call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(lines):
        call()
    return (
        (time.perf_counter() - wall) / lines * 1e6,
        (time.process_time() - cpu) / lines * 1e6,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=20000, help="access lines per case")
    args = parser.parse_args(argv)
    env = environ()
    resp = SimpleNamespace(
        status="200 OK",
        sent=14,
        headers=[("Content-Type", "text/plain"), ("Content-Length", "14")],
    )
    req = SimpleNamespace(headers=[("HOST", "127.0.0.1:8000"), ("USER-AGENT", "wrk")])
    took = datetime.timedelta(microseconds=120)
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="wagi-access-") as tmp:
        for case, path, json in (
            ("off (accesslog None)", None, False),
            ("text, gunicorn's line to a file", f"{tmp}/text.log", False),
            ("json (--log-format json) to a file", f"{tmp}/json.log", True),
        ):
            logger = make_logger(path, json)
            results[case] = per_line_us(
                args.lines,
                lambda logger=logger: logger.access(resp, req, env, took),  # type: ignore[misc]
            )
        fd = os.open(f"{tmp}/floor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        def floor() -> None:
            now = time.strftime("[%d/%b/%Y:%H:%M:%S %z]")
            line = (
                f'{env["REMOTE_ADDR"]} - - {now} "{env["REQUEST_METHOD"]} {env["RAW_URI"]} '
                f'{env["SERVER_PROTOCOL"]}" 200 {resp.sent} "-" "{env["HTTP_USER_AGENT"]}"\n'
            )
            os.write(fd, line.encode())

        results["floor: one f-string, one os.write"] = per_line_us(args.lines, floor)
        os.close(fd)
    print(f"one access line, {args.lines} lines per case (µs per line)")
    print(f"{'case':<38} {'wall µs':>8} {'CPU µs':>8}")
    for case, (wall, cpu) in results.items():
        print(f"{case:<38} {wall:>8.2f} {cpu:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
