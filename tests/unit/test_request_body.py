"""Request bodies: small ones in memory, large ones spooled, the limit exact either way."""

from __future__ import annotations

import io

import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from wagi.server.body import SPOOL_ABOVE, read_body

LIMIT = 3 * SPOOL_ABOVE


def request(size: int, *, chunked: bool) -> Request:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    environ = EnvironBuilder(method="POST", input_stream=io.BytesIO(data)).get_environ()
    if chunked:  # as gunicorn presents a chunked body: no length, input terminated
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(size)
    return Request(environ)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [0, 100, SPOOL_ABOVE, SPOOL_ABOVE + 1, LIMIT])
def test_a_body_up_to_the_limit_arrives_whole(size: int, chunked: bool) -> None:
    body = read_body(request(size, chunked=chunked), LIMIT)
    with body:
        assert body.length == size
        if size > SPOOL_ABOVE:  # on disk, not in memory
            assert body.data == b"" and body.spool is not None and body.path
            with open(body.path, "rb") as spooled:
                content = spooled.read()
        else:
            assert body.spool is None and body.path is None
            content = body.data
    assert content == bytes(range(256)) * (size // 256) + b"x" * (size % 256)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_one_byte_over_the_limit_is_413(chunked: bool) -> None:
    with pytest.raises(RequestEntityTooLarge):
        read_body(request(LIMIT + 1, chunked=chunked), LIMIT)
