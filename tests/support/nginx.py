"""A real nginx for the tests, running the deploy kit's site (``deploy/nginx/wagi.conf``).

The site is used as shipped; only the machine-specific parts are rendered: the gunicorn socket,
the two ``listen`` ports and the certificate. Everything else (headers, limits, timeouts,
buffering) is exactly what operators install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from .certificates import self_signed_certificate
from .servers import ROOT, Server, free_port, stop_process

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITE = ROOT / "deploy" / "nginx" / "wagi.conf"


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{SITE} should contain {old!r} exactly once"
    return text.replace(old, new)


def render_site(socket_path: Path, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """``deploy/nginx/wagi.conf`` with this test's socket, loopback ports and certificate."""
    site = SITE.read_text()
    site = _replace_once(site, "server unix:/run/wagi.sock", f"server unix:{socket_path}")
    site = _replace_once(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = _replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    site = _replace_once(site, "/etc/ssl/certs/ssl-cert-snakeoil.pem", str(cert))
    return _replace_once(site, "/etc/ssl/private/ssl-cert-snakeoil.key", str(key))


def main_config(prefix: Path, http_block: str) -> Path:
    """An nginx.conf keeping nginx's files under ``prefix``, with ``http_block`` in ``http {}``."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    # As root, nginx's workers would drop to nobody and could not reach a socket in a
    # root-only temporary directory.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        textwrap.dedent(f"""
        {user}
        worker_processes 1;
        daemon off;
        pid {prefix}/nginx.pid;
        error_log {prefix}/logs/error.log;
        events {{ worker_connections 64; }}
        http {{
            access_log {prefix}/logs/access.log;
            client_body_temp_path {prefix}/body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
        """)
        + textwrap.indent(http_block, "    ")
        + "\n}\n"
    )
    return conf


def check_config(conf: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``conf``."""
    return subprocess.run(
        [NGINX, "-t", "-c", str(conf), "-p", str(conf.parent)], capture_output=True, text=True
    )


@dataclass
class Nginx:
    """A running nginx (``daemon off``), stopped gracefully by :meth:`stop`."""

    process: subprocess.Popen[bytes]
    prefix: Path

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, signal.SIGQUIT, timeout=10)


def start_nginx(conf: Path, health_url: str, *, verify: bool | str = True) -> Nginx:
    """Start nginx on ``conf`` and wait until ``health_url`` answers 200 through it."""
    if not Path(NGINX).exists():
        raise RuntimeError(
            "nginx is not installed (apt-get install nginx-light); ./run-tests installs it"
        )
    process = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(conf.parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nginx = Nginx(process, conf.parent)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(health_url, timeout=2, verify=verify).status_code == 200:
                return nginx
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            nginx.stop()
            raise RuntimeError(f"nginx did not start:\n{nginx.error_log()[-3000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def nginx_in_front(tmp: Path, sock: Path, server: Server) -> Iterator[str]:
    """The shipped site in a real nginx, proxying to ``server`` on unix socket ``sock``.

    Yields nginx's plain-HTTP URL once ``/healthz`` answers through it and stops nginx
    afterwards (the caller stops ``server``).
    """
    cert, key = self_signed_certificate(tmp / "tls")
    http_port, https_port = free_port(), free_port()
    conf = main_config(tmp / "nginx", render_site(sock, http_port, https_port, cert, key))
    url = f"http://127.0.0.1:{http_port}"
    try:
        nginx = start_nginx(conf, url + "/healthz")
    except RuntimeError as exc:
        server.stop()
        pytest.fail(f"{exc}\ngunicorn:\n{server.log()[-3000:]}")
    try:
        yield url
    finally:
        nginx.stop()
