"""wagi behind a real nginx running the deploy kit's site, over a unix socket, on every engine.

nginx listens on plain HTTP and on TLS (a certificate made for the test), exactly as
``deploy/nginx/wagi.conf`` says; gunicorn trusts one proxy hop, as ``deploy/systemd/wagi.service``
says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ..support.nginx import (
    Nginx,
    check_config,
    main_config,
    render_site,
    self_signed_certificate,
    start_nginx,
)
from ..support.servers import Server, env_lines, free_port, start_gunicorn, write_config

MIB = 1024**2


@dataclass
class Proxied:
    http: str
    https: str
    cert: Path
    server: Server
    nginx: Nginx


@pytest.fixture(scope="module")
def proxied(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    tmp = tmp_path_factory.mktemp("nginx")
    sock = tmp / "wagi.sock"
    config = write_config(
        tmp / "conf",
        '[[module]]\nroute = "/probe/..."\nmodule = "{probe}"\n'
        '[[module]]\nroute = "/stream/..."\nmodule = "{probe}"\n'
        '[[module]]\nroute = "/hello"\nmodule = "{samples}/hello.wat"\n',
    )
    server = start_gunicorn(
        tmp,
        config,
        engine,
        bind=f"unix:{sock}",
        wait=False,
        workers=1,
        extra_env={"WAGI_TRUSTED_PROXY_HOPS": "1"},
    )
    cert, key = self_signed_certificate(tmp / "tls")
    http_port, https_port = free_port(), free_port()
    conf = main_config(tmp / "nginx", render_site(sock, http_port, https_port, cert, key))
    https = f"https://127.0.0.1:{https_port}"
    checked = check_config(conf)
    if checked.returncode != 0 or "[warn]" in checked.stderr:
        server.stop()
        pytest.fail(f"nginx -t refuses the rendered site:\n{checked.stderr}")
    try:
        nginx = start_nginx(conf, https + "/healthz", verify=str(cert))
    except RuntimeError as exc:
        server.stop()
        pytest.fail(f"{exc}\ngunicorn:\n{server.log()[-3000:]}")
    yield Proxied(f"http://127.0.0.1:{http_port}", https, cert, server, nginx)
    nginx.stop()
    server.stop()


def test_hello_through_nginx(proxied: Proxied) -> None:
    r = requests.get(proxied.http + "/hello", timeout=10)
    assert (r.status_code, r.text) == (200, "Hello, world!\n")
    assert r.headers["Content-Type"] == "text/plain"


def test_forwarded_headers_from_the_trusted_proxy(proxied: Proxied) -> None:
    r = requests.get(
        proxied.https + "/probe/p?hdr&env",
        timeout=10,
        verify=str(proxied.cert),
        headers={"X-Forwarded-For": "6.6.6.6", "Host": "site.test"},
    )
    env = env_lines(r.text)
    # nginx appended the real client (127.0.0.1); only that one hop is trusted.
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTPS"] == "on"
    assert env["X_FULL_URL"] == "https://site.test/probe/p?hdr&env"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("site.test", "443")


def test_plain_http_through_nginx_is_not_https(proxied: Proxied) -> None:
    port = proxied.http.rsplit(":", 1)[1]
    env = env_lines(requests.get(proxied.http + "/probe/p?hdr&env", timeout=10).text)
    assert "HTTPS" not in env
    assert env["X_FULL_URL"] == f"http://127.0.0.1:{port}/probe/p?hdr&env"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", port)


def test_a_client_cannot_forge_the_forwarded_host_port_or_scheme(proxied: Proxied) -> None:
    port = proxied.http.rsplit(":", 1)[1]
    r = requests.get(
        proxied.http + "/probe/p?hdr&env",
        timeout=10,
        headers={
            "X-Forwarded-Host": "evil.test",
            "X-Forwarded-Port": "8443",
            "X-Forwarded-Proto": "https",
        },
    )
    env = env_lines(r.text)
    assert "HTTPS" not in env
    assert env["X_FULL_URL"] == f"http://127.0.0.1:{port}/probe/p?hdr&env"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", port)
    # The module still sees what the client sent, as plain request headers.
    assert env["HTTP_X_FORWARDED_PROTO"] == "http"
    assert "HTTP_X_FORWARDED_HOST" not in env


def test_body_through_nginx(proxied: Proxied) -> None:
    body = bytes(range(256)) * 64
    r = requests.post(proxied.http + "/probe?hdr&cat", data=body, timeout=10)
    assert r.content == body


def test_a_body_of_exactly_the_limit_passes_one_byte_more_is_413(proxied: Proxied) -> None:
    # client_max_body_size 10m in the site is wagi's --max-body (10 MiB) in nginx's words.
    body = bytes(range(256)) * (10 * MIB // 256)
    r = requests.post(proxied.http + "/probe?hdr&cat", data=body, timeout=60)
    assert r.status_code == 200
    assert r.content == body
    r = requests.post(proxied.http + "/probe?hdr&cat", data=body + b"x", timeout=60)
    assert r.status_code == 413
    assert r.headers["Server"].startswith("nginx")


def test_the_streaming_location_proxies_too(proxied: Proxied) -> None:
    r = requests.get(proxied.https + "/stream/x?hdr&print=a&print=b", verify=str(proxied.cert))
    assert (r.status_code, r.text) == (200, "a\nb\n")
    assert r.headers["Content-Type"] == "text/plain"


def test_untrusted_forwarded_headers_are_ignored(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/probe"\nmodule = "{probe}"\n')
    server = start_gunicorn(tmp_path, config, "wasmtime", workers=1)
    try:
        r = server.get(
            "/probe?hdr&env", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"}
        )
        env = env_lines(r.text)
        assert env["REMOTE_ADDR"] == "127.0.0.1"
        assert "HTTPS" not in env
        assert env["X_FULL_URL"].startswith("http://")
    finally:
        server.stop()
