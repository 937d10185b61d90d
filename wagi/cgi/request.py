"""Turning an HTTP request into a CGI invocation: argv, environment and stdin.

This is RFC 3875 plus the ``X_*`` variables of the Rust WAGI. The module's
environment holds nothing of the host: global variables (``--env-file``, then
``--env``), then the module's ``environment``, then the CGI variables, which
nothing can override.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import wagi

SERVER_SOFTWARE = f"WAGI/{wagi.__version__}"

# Credentials and hop-by-hop headers never reach a module; ``Proxy`` because a
# module's HTTP client would take HTTP_PROXY as its proxy (httpoxy).
HIDDEN_HEADERS = frozenset(
    {"HTTP_AUTHORIZATION", "HTTP_CONNECTION", "HTTP_PROXY", "HTTP_PROXY_AUTHORIZATION"}
)

_SUBSTITUTED = re.compile(r"\$\{(?:SCRIPT_NAME|ARGS)\}")
"""The placeholders a request fills in (anything else stays as written)."""


def raw_path_and_query(environ: Mapping[str, object]) -> tuple[str, str]:
    """The request path exactly as the client sent it (undecoded), and the raw query string."""
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw_uri, str) and raw_uri:
        if not raw_uri.startswith("/"):
            # Absolute-form request target: http://host/path?query
            scheme_end = raw_uri.find("://")
            slash = raw_uri.find("/", scheme_end + 3) if scheme_end >= 0 else -1
            raw_uri = raw_uri[slash:] if slash >= 0 else "/"
        path, _, query = raw_uri.partition("?")
        return path or "/", query.partition("#")[0]
    # Not every WSGI server keeps the raw URI; rebuild it from the decoded parts.
    path_info = str(environ.get("PATH_INFO", "")).encode("latin-1").decode("utf-8", "replace")
    script = str(environ.get("SCRIPT_NAME", ""))
    return quote(script + path_info) or "/", str(environ.get("QUERY_STRING", ""))


ARGS = "${ARGS}"
SCRIPT_NAME = "${SCRIPT_NAME}"
PLACEHOLDERS = (SCRIPT_NAME, ARGS)
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True)
class ArgvTemplate:
    """How a route builds its argv, parsed once at start-up (``argv`` in modules.toml).

    Two forms, with the placeholders ``${SCRIPT_NAME}`` and ``${ARGS}`` (the query
    string split on ``&``, items kept raw, not decoded):

    - a string (WAGI 0.8's form): the placeholders are substituted, then the
      result is split on whitespace, so empty items vanish::

          >>> ArgvTemplate.parse("${SCRIPT_NAME} ${ARGS}").expand("/env", "a=1&b=2")
          ['/env', 'a=1', 'b=2']

    - a list of strings: each item is one argument, spaces and empty strings
      included. An item that is exactly ``${ARGS}`` becomes the query's items
      (none for an empty query); elsewhere the placeholders substitute inside
      the item (``${ARGS}`` as the items joined by spaces)::

          >>> t = ArgvTemplate.parse(["tool", "-p", "read x; run y", "${ARGS}"])
          >>> t.expand("/t", "a&b")
          ['tool', '-p', 'read x; run y', 'a', 'b']
          >>> ArgvTemplate.parse(["${SCRIPT_NAME}.sh", "--q=${ARGS}"]).expand("/t", "")
          ['/t.sh', '--q=']
    """

    items: tuple[str, ...]
    """The list form's items, or the string form as its only item."""
    split: bool = False
    """The string form: substitute, then split on whitespace."""

    @classmethod
    def parse(cls, value: object) -> ArgvTemplate:
        """Check a TOML value; raise ValueError with a message fit for the user."""
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(f"expected a non-empty string or a list of strings, got {value!r}")
            return cls((value,), split=True)
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a string or a non-empty list of strings, got {value!r}")
        for number, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {number} is not a string: {item!r}")
            for name in _PLACEHOLDER.findall(item):
                if "${" + name + "}" not in PLACEHOLDERS:
                    raise ValueError(
                        f"item {number} ({item!r}): unknown placeholder ${{{name}}} "
                        f"(known: {', '.join(PLACEHOLDERS)})"
                    )
        return cls(tuple(value))

    def expand(self, script_name: str, query: str) -> list[str]:
        """The argv of one request."""
        args = query.split("&") if query else []
        values = {SCRIPT_NAME: script_name, ARGS: " ".join(args)}

        def substitute(match: re.Match[str]) -> str:
            return values[match.group(0)]

        if self.split:
            # One pass: a route or query that itself holds "${ARGS}" is never expanded again.
            return _SUBSTITUTED.sub(substitute, self.items[0]).split()

        argv: list[str] = []
        for item in self.items:
            if item == ARGS:
                argv.extend(args)
            elif "${" in item:
                argv.append(_SUBSTITUTED.sub(substitute, item))
            else:
                argv.append(item)
        return argv


DEFAULT_ARGV = ArgvTemplate(("${SCRIPT_NAME} ${ARGS}",), split=True)


def build_argv(template: ArgvTemplate | str, script_name: str, query: str) -> list[str]:
    """``"${SCRIPT_NAME} ${ARGS}"`` -> ``["/env", "greet=matt", "foo=bar"]``.

    See :class:`ArgvTemplate`; a plain string is the string form, as written.
    """
    if isinstance(template, str):
        template = ArgvTemplate((template,), split=True)
    return template.expand(script_name, query)


def _split_host(host: str, default_port: str) -> tuple[str, str]:
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        return name, rest[1:] if rest.startswith(":") and rest[1:] else default_port
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and name:
        return name, port
    return host, default_port


def cgi_variables(
    environ: Mapping[str, Any],
    *,
    raw_path: str,
    query: str,
    script_name: str,
    raw_path_info: str,
    matched_route: str,
    body_length: int,
    default_host: str,
    request_id: str = "",
) -> dict[str, str]:
    """The CGI meta-variables for a request (its WSGI ``environ``) that matched
    ``matched_route``.

    ``request_id`` becomes ``X_REQUEST_ID`` (see :mod:`wagi.observability.observe`).
    """
    scheme = environ.get("wsgi.url_scheme", "http")
    default_port = "443" if scheme == "https" else "80"
    host_header = environ.get("HTTP_HOST") or ""
    server_name, server_port = _split_host(host_header or default_host, default_port)
    host_for_url = host_header or default_host
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    request_uri = raw_path + ("?" + query if query else "")
    env = {
        "AUTH_TYPE": authorization.split(" ", 1)[0] if authorization else "",
        "CONTENT_LENGTH": str(body_length),
        "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "QUERY_STRING": query,
        "REMOTE_ADDR": environ.get("REMOTE_ADDR") or "",
        "REMOTE_HOST": environ.get("REMOTE_ADDR") or "",
        "REMOTE_USER": environ.get("REMOTE_USER") or "",
        "REQUEST_METHOD": environ.get("REQUEST_METHOD", "GET").upper(),
        "REQUEST_URI": request_uri,
        "SCRIPT_NAME": script_name,
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "X_MATCHED_ROUTE": matched_route,
        "X_RAW_PATH_INFO": raw_path_info,
        "X_FULL_URL": f"{scheme}://{host_for_url}{request_uri}",
        "X_REQUEST_ID": request_id,
    }
    remote_port = environ.get("REMOTE_PORT")
    if remote_port:
        env["REMOTE_PORT"] = str(remote_port)
    if scheme == "https":
        env["HTTPS"] = "on"
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            env["HTTP_" + key] = environ[key]
    for key, value in environ.items():
        if key.startswith("HTTP_") and key not in HIDDEN_HEADERS:
            env[key] = value
    # WSGI strings are latin-1 decoded bytes; give modules the bytes back as UTF-8 text
    # where they are UTF-8.
    if not "".join(env.values()).isascii():
        env = {k: v if v.isascii() else _wsgi_to_text(v) for k, v in env.items()}
    env["PATH_INFO"] = env["PATH_TRANSLATED"] = unquote(_wsgi_to_text(raw_path_info))
    return env


def _wsgi_to_text(value: str) -> str:
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value
