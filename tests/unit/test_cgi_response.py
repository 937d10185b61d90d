"""The CGI response parser (docs/cgi.md, 'The response'), byte for byte."""

from __future__ import annotations

import pytest

from wagi.cgi.response import BadCgiResponse, parse_cgi_response, split_head


def test_lf_header_block() -> None:
    r = parse_cgi_response(b"Content-Type: text/plain\n\nhello\n")
    assert (r.status, r.reason, r.headers, r.body) == (
        200,
        None,
        [("Content-Type", "text/plain")],
        b"hello\n",
    )


def test_crlf_header_block_and_body_untouched() -> None:
    r = parse_cgi_response(b"Content-Type: text/html\r\nX-A: 1\r\n\r\nline\r\n\r\nmore\r")
    assert r.headers == [("Content-Type", "text/html"), ("X-A", "1")]
    assert r.body == b"line\r\n\r\nmore\r"


def test_stray_carriage_returns_in_header_block_are_ignored() -> None:
    r = parse_cgi_response(b"Content-Type: text/plain\r\r\n\r\nbody")
    assert r.headers == [("Content-Type", "text/plain")]
    assert r.body == b"body"


def test_empty_body_and_binary_body() -> None:
    assert parse_cgi_response(b"Content-Type: a/b\n\n").body == b""
    blob = bytes(range(256)) * 4
    assert parse_cgi_response(b"Content-Type: a/b\n\n" + blob).body == blob


def test_repeated_headers_are_all_kept_in_order() -> None:
    r = parse_cgi_response(b"Content-Type: t/p\nSet-Cookie: a=1\nset-cookie: b=2\n\n")
    assert r.headers == [("Content-Type", "t/p"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")]


@pytest.mark.parametrize(
    "block",
    [b"Status: 201 Made\nLocation: /x\n\n", b"Location: /x\nStatus: 201 Made\n\n"],
)
def test_explicit_status_wins_over_location_in_either_order(block: bytes) -> None:
    r = parse_cgi_response(block)
    assert (r.status, r.reason, r.headers) == (201, "Made", [("Location", "/x")])


def test_location_alone_redirects() -> None:
    r = parse_cgi_response(b"Location: https://example.com/\n\n")
    assert (r.status, r.headers) == (302, [("Location", "https://example.com/")])


def test_status_without_reason_and_case_insensitive_names() -> None:
    r = parse_cgi_response(b"STATUS: 418\ncontent-type: text/plain\n\nteapot")
    assert (r.status, r.reason) == (418, None)


def test_hop_by_hop_and_content_length_are_dropped() -> None:
    r = parse_cgi_response(
        b"Content-Type: t/p\nConnection: close\nTransfer-Encoding: chunked\n"
        b"Content-Length: 999\nKeep-Alive: 5\nUpgrade: h2c\nX-Kept: yes\n\nbody"
    )
    assert r.headers == [("Content-Type", "t/p"), ("X-Kept", "yes")]


def test_value_bytes_survive_as_latin1() -> None:
    r = parse_cgi_response("X-Name: café\nContent-Type: t/p\n\n".encode())
    assert r.headers[0] == ("X-Name", "café".encode().decode("latin-1"))


@pytest.mark.parametrize(
    ("output", "why"),
    [
        (b"", "no empty line"),
        (b"hello world", "no empty line"),
        (b"Content-Type: text/plain\nno blank line", "no empty line"),
        (b"X-Only: header\n\nbody", "none of Content-Type, Location or Status"),
        (b"\nbody", "none of Content-Type"),
        (b"Not a header\n\n", "invalid header line"),
        (b"Bad Name: x\n\n", "invalid header line"),
        (b" folded: x\n\n", "invalid header line"),
        (b"Status: 99\n\n", "invalid Status"),
        (b"Status: 600 Nope\n\n", "invalid Status"),
        # Informational statuses are not final: gunicorn would send them and drop the body.
        (b"Status: 100 Continue\nContent-Type: t/p\n\nbody", "invalid Status"),
        (b"Status: 101 Switching Protocols\n\n", "invalid Status"),
        (b"Status: 199\n\n", "invalid Status"),
        (b"Status: abc\n\n", "invalid Status"),
        (b"Status: 200\nStatus: 404\n\n", "more than one Status"),
        (b"X-A: a\x00b\nContent-Type: t/p\n\n", "control character"),
    ],
)
def test_invalid_responses(output: bytes, why: str) -> None:
    with pytest.raises(BadCgiResponse, match=why):
        parse_cgi_response(output)


@pytest.mark.parametrize(
    ("output", "parts"),
    [
        (b"Content-Type: t/p\n\nbody", (b"Content-Type: t/p\n", b"body")),
        (b"Content-Type: t/p\r\n\r\nbo\r\n\r\ndy", (b"Content-Type: t/p\r\n", b"bo\r\n\r\ndy")),
        (b"A: b\r\nContent-Type: t/p\n\r\r\n", (b"A: b\r\nContent-Type: t/p\n", b"")),
        (b"\nbody", (b"", b"body")),
        (b"\r\nbody", (b"", b"body")),
        (b"Content-Type: t/p\n", None),
        (b"Content-Type: t/p\r\n\r", None),
    ],
)
def test_split_head_finds_the_end_of_a_header_block_as_bytes_arrive(
    output: bytes, parts: tuple[bytes, bytes] | None
) -> None:
    assert split_head(output) == parts
    if parts is not None:  # the same answer however the bytes were split into writes
        for cut in range(len(output)):
            early = split_head(output[:cut])
            assert early is None or (early[0] == parts[0] and parts[1].startswith(early[1]))
