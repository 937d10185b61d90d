"""gunicorn's default access line, written the cheap way, is byte for byte gunicorn's own."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from wagi.observability.logformat import GunicornLogger


class _Response:
    def __init__(self, status: str, sent: int | None) -> None:
        self.status = status
        self.sent = sent
        self.headers = [("Content-Type", "text/plain"), ("X-Request-Id", "abc")]


def _logger(path: Path, fmt: str | None = None) -> GunicornLogger:
    cfg = Config()
    cfg.set("accesslog", str(path))
    if fmt is not None:
        cfg.set("access_log_format", fmt)
    return GunicornLogger(cfg)


ENVIRONS: list[dict[str, Any]] = [
    {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/hello?a=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": 'curl/8 "quoted"',
        "HTTP_REFERER": "http://x/",
    },
    {  # no address, agent or referer; Basic credentials name the user
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/echo",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"matt:secret").decode(),
    },
]


@pytest.mark.parametrize("environ", ENVIRONS)
@pytest.mark.parametrize("sent", [14, 0, None])
def test_the_default_line_is_gunicorns_own(
    tmp_path: Path, environ: dict[str, Any], sent: int | None
) -> None:
    ours, theirs = tmp_path / "ours.log", tmp_path / "theirs.log"
    response = _Response("200 OK", sent)
    took = datetime.timedelta(microseconds=1234)
    _logger(ours).access(response, [], dict(environ), took)
    Logger.access(_logger(theirs), response, [], dict(environ), took)
    ours_line, theirs_line = ours.read_text(), theirs.read_text()
    # The timestamps may straddle a second: compare around them.
    assert ours_line.split("[", 1)[0] == theirs_line.split("[", 1)[0]
    assert ours_line.split("]", 1)[1] == theirs_line.split("]", 1)[1]
    assert ours_line.count("\n") == 1


def test_a_format_of_the_operators_own_is_gunicorns_to_fill(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _logger(log, "%(m)s %(U)s %({x-request-id}o)s %(p)s").access(
        _Response("404 Not Found", 3),
        [],
        dict(ENVIRONS[0], PATH_INFO="/hello"),
        datetime.timedelta(seconds=1),
    )
    assert log.read_text().startswith("GET /hello abc <")
