"""wagi behind a real nginx, classic CGI style: over a unix socket, trusting one proxy hop."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import (
    ENGINES,
    SAMPLES,
    Server,
    env_lines,
    free_port,
    start_gunicorn,
    write_config,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@contextlib.contextmanager
def nginx_in_front(tmp: Path, sock: Path, server: Server) -> Iterator[str]:
    """A real nginx on a free loopback port proxying to ``server`` on unix socket ``sock``.

    Yields nginx's URL once ``/healthz`` answers through it; stops nginx afterwards (the
    caller stops ``server``). Its logs are under ``tmp/logs``.
    """
    if not Path(NGINX).exists():
        server.stop()
        pytest.fail("nginx is not installed (apt-get install nginx-light); ./run-tests installs it")
    port = free_port()
    (tmp / "logs").mkdir()
    conf = tmp / "nginx.conf"
    # As root, nginx's workers would drop to nobody and lose access to the socket.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        textwrap.dedent(f"""
        {user}
        worker_processes 1;
        daemon off;
        pid {tmp}/nginx.pid;
        error_log {tmp}/logs/error.log;
        events {{ worker_connections 64; }}
        http {{
            access_log {tmp}/logs/access.log;
            client_body_temp_path {tmp}/body;
            proxy_temp_path {tmp}/proxy;
            fastcgi_temp_path {tmp}/fastcgi;
            uwsgi_temp_path {tmp}/uwsgi;
            scgi_temp_path {tmp}/scgi;
            upstream wagi {{ server unix:{sock}; }}
            server {{
                listen 127.0.0.1:{port};
                location / {{
                    proxy_pass http://wagi;
                    proxy_set_header Host $http_host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                    proxy_set_header X-Forwarded-Proto https;
                }}
            }}
        }}
    """)
    )
    nginx = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or nginx.poll() is not None or server.process.poll():
            nginx.kill()
            server.stop()
            pytest.fail(
                f"nginx/gunicorn did not start:\n{server.log()[-3000:]}\n"
                f"{(tmp / 'logs' / 'error.log').read_text()[-3000:]}"
            )
        time.sleep(0.1)
    try:
        yield url
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=10)


@pytest.fixture(scope="module", params=ENGINES)
def proxied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Server]]:
    tmp = tmp_path_factory.mktemp("nginx")
    sock = tmp / "wagi.sock"
    config = write_config(
        tmp / "conf",
        '[[module]]\nroute = "/probe/..."\nmodule = "{probe}"\n'
        '[[module]]\nroute = "/hello"\nmodule = "{samples}/hello.wat"\n',
    )
    server = start_gunicorn(
        tmp,
        config,
        str(request.param),
        bind=f"unix:{sock}",
        wait=False,
        extra_env={"WAGI_TRUSTED_PROXY_HOPS": "1"},
    )
    with nginx_in_front(tmp, sock, server) as url:
        yield url, server
    server.stop()


def test_hello_through_nginx(proxied: tuple[str, Server]) -> None:
    url, _ = proxied
    r = requests.get(url + "/hello", timeout=10)
    assert (r.status_code, r.text) == (200, "Hello, world!\n")
    assert r.headers["Content-Type"] == "text/plain"


def test_forwarded_headers_from_the_trusted_proxy(proxied: tuple[str, Server]) -> None:
    url, _ = proxied
    r = requests.get(
        url + "/probe/p?hdr&env",
        timeout=10,
        headers={"X-Forwarded-For": "6.6.6.6", "Host": "site.test"},
    )
    env = env_lines(r.text)
    # nginx appended the real client (127.0.0.1); only that one hop is trusted.
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTPS"] == "on"
    assert env["X_FULL_URL"] == "https://site.test/probe/p?hdr&env"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("site.test", "443")


def test_body_through_nginx(proxied: tuple[str, Server]) -> None:
    url, _ = proxied
    body = bytes(range(256)) * 64
    r = requests.post(url + "/probe?hdr&cat", data=body, timeout=10)
    assert r.content == body


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


def test_samples_config_exists() -> None:
    assert (SAMPLES / "modules.toml").is_file()
