"""Turning an HTTP request into a CGI invocation: argv, environment and stdin.

This is RFC 3875 plus the ``X_*`` variables of the Rust WAGI. The module's
environment holds nothing of the host: global variables (``--env-file``, then
``--env``), then the module's ``environment``, then the CGI variables, which
nothing can override.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, unquote

from werkzeug.wrappers import Request

import wagi

SERVER_SOFTWARE = f"WAGI/{wagi.__version__}"

# Credentials and hop-by-hop headers never reach a module; ``Proxy`` because a
# module's HTTP client would take HTTP_PROXY as its proxy (httpoxy).
HIDDEN_HEADERS = frozenset(
    {"HTTP_AUTHORIZATION", "HTTP_CONNECTION", "HTTP_PROXY", "HTTP_PROXY_AUTHORIZATION"}
)


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


def build_argv(template: str, script_name: str, query: str) -> list[str]:
    """``"${SCRIPT_NAME} ${ARGS}"`` -> ``["/env", "greet=matt", "foo=bar"]``.

    The query string is split on ``&`` and the items are kept raw (not decoded),
    as in WAGI; the result is then split on whitespace, so empty items vanish.
    """
    args = " ".join(query.split("&")) if query else ""
    return template.replace("${SCRIPT_NAME}", script_name).replace("${ARGS}", args).split()


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
    request: Request,
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
    """The CGI meta-variables for a request that matched ``matched_route``.

    ``request_id`` becomes ``X_REQUEST_ID`` (see :mod:`wagi.observe`).
    """
    environ = request.environ
    scheme = request.scheme
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
        "REQUEST_METHOD": request.method,
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
    env = {k: _wsgi_to_text(v) for k, v in env.items()}
    env["PATH_INFO"] = env["PATH_TRANSLATED"] = unquote(_wsgi_to_text(raw_path_info))
    return env


def _wsgi_to_text(value: str) -> str:
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value
