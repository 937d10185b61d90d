"""Turning what a module printed into an HTTP status, headers and body.

A CGI response is a header block, an empty line, then the body (RFC 3875
section 6)::

    >>> r = parse_cgi_response(b"Content-Type: text/plain\\r\\nStatus: 404 Gone\\r\\n\\r\\nbye")
    >>> r.status, r.reason, r.headers, r.body
    (404, 'Gone', [('Content-Type', 'text/plain')], b'bye')

For streaming, :func:`split_head` finds the end of the header block in the
first bytes a module writes, and :func:`parse_head` turns it into a status and
headers before the body is complete::

    >>> split_head(b"Content-Type: text/plain\\n\\nfirst line")
    (b'Content-Type: text/plain\\n', b'first line')
    >>> split_head(b"Content-Type: text/plain\\n") is None
    True

The rules (docs/cgi.md, 'The response'): headers end at the first empty line, LF or CRLF;
carriage returns inside the header block are ignored; the body is passed
through byte for byte. ``Status: NNN [reason]`` sets the status and always wins;
``Location`` without ``Status`` means 302. Only a final status (200-599)
may be sent: an informational ``1xx`` makes the response invalid. A response needs ``Content-Type``,
``Location`` or ``Status``. Hop-by-hop headers are dropped, and so is any
``Content-Length`` (the server measures the body itself).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(r"([2-5][0-9][0-9])(?:[ \t]+(.*))?")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

DROPPED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class BadCgiResponse(ValueError):
    """The module's output is not a valid CGI response; the message says why (for the log)."""


@dataclass(frozen=True)
class CgiHead:
    """The status and headers of a CGI response, known before its body is complete."""

    status: int
    reason: str | None
    headers: list[tuple[str, str]]


@dataclass(frozen=True)
class CgiResponse(CgiHead):
    body: bytes


_HEADER_END = re.compile(rb"\n\r*\n")
"""The empty line that ends the header block: LF, then any CRs (ignored), then LF."""


def split_head(output: bytes | bytearray) -> tuple[bytes, bytes] | None:
    """``(header block, body so far)`` once the empty line has arrived, else ``None``."""
    if output.startswith((b"\n", b"\r\n")):  # no headers at all, just the empty line
        first = output.index(b"\n")
        if not output[:first].strip(b"\r"):
            return b"", bytes(output[first + 1 :])
    match = _HEADER_END.search(output)
    if match is None:
        return None
    return bytes(output[: match.start() + 1]), bytes(output[match.end() :])


def parse_cgi_response(output: bytes) -> CgiResponse:
    """Parse a module's whole stdout; raise :class:`BadCgiResponse` if it is not CGI."""
    parts = split_head(output)
    if parts is None:
        raise BadCgiResponse("no empty line ends the header block")
    head = parse_head(parts[0])
    return CgiResponse(head.status, head.reason, head.headers, parts[1])


@functools.lru_cache(maxsize=512)
def parse_head(block: bytes) -> CgiHead:
    """Parse a header block (from :func:`split_head`); raise :class:`BadCgiResponse`.

    A route's module mostly prints the same header block every time, so parsed heads are
    remembered: callers must not change the ``headers`` list they get (copy it)."""
    lines = [line for line in block.replace(b"\r", b"").split(b"\n") if line]
    headers: list[tuple[str, str]] = []
    status: int | None = None
    reason: str | None = None
    has_location = has_content_type = False
    for line in lines:
        name_bytes, colon, value_bytes = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name_bytes):
            raise BadCgiResponse(f"invalid header line {line[:80]!r}")
        value_bytes = value_bytes.strip(b" \t")
        if _FORBIDDEN_IN_VALUE.search(value_bytes):
            raise BadCgiResponse(f"control character in header {name_bytes[:80]!r}")
        name = name_bytes.decode("ascii")
        # WSGI carries header values as latin-1 strings: every byte survives.
        value = value_bytes.decode("latin-1")
        key = name.lower()
        if key == "status":
            if status is not None:
                raise BadCgiResponse("more than one Status header")
            match = _STATUS.fullmatch(value)
            if match is None:
                raise BadCgiResponse(f"invalid Status {value[:80]!r}")
            status = int(match.group(1))
            reason = (match.group(2) or "").strip() or None
            continue
        if key == "location":
            has_location = True
        elif key == "content-type":
            has_content_type = True
        if key not in DROPPED_HEADERS:
            headers.append((name, value))
    if status is None:
        if has_location:
            status = 302
        elif has_content_type:
            status = 200
        else:
            raise BadCgiResponse("the response has none of Content-Type, Location or Status")
    return CgiHead(status=status, reason=reason, headers=headers)
