"""TLS straight from gunicorn (``--certfile``/``--keyfile``), no proxy, on every engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ..support.certificates import self_signed_certificate
from ..support.servers import Server, env_lines, start_gunicorn, wait_until_healthy, write_config


def start_tls_server(tmp: Path, engine: str, config_body: str) -> tuple[Server, Path]:
    """gunicorn with ``--certfile``/``--keyfile`` (a fresh self-signed pair), answering:
    the server and the certificate to trust."""
    cert, key = self_signed_certificate(tmp / "tls")
    server = start_gunicorn(
        tmp,
        write_config(tmp, config_body),
        engine,
        workers=1,
        wait=False,
        gunicorn_args=("--certfile", str(cert), "--keyfile", str(key)),
    )
    server.url = server.url.replace("http://", "https://")
    try:
        wait_until_healthy(server.process, server.url, server.log_path, verify=str(cert))
    except Exception:
        server.stop()
        raise
    return server, cert


@pytest.fixture(scope="module")
def tls_server(
    engine: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("tls")
    server, cert = start_tls_server(
        tmp, engine, '[[module]]\nroute = "/probe/..."\nmodule = "{probe}"\n'
    )
    yield server, cert
    server.stop()


def test_a_module_served_over_tls_sees_https(tls_server: tuple[Server, Path]) -> None:
    server, cert = tls_server
    port = server.url.rsplit(":", 1)[1]
    r = requests.get(server.url + "/probe/a/b?hdr&env", timeout=30, verify=str(cert))
    assert r.status_code == 200
    env = env_lines(r.text)
    assert env["HTTPS"] == "on"
    assert env["X_FULL_URL"] == f"https://127.0.0.1:{port}/probe/a/b?hdr&env"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", port)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/probe", "/a/b")


def test_the_body_arrives_intact_over_tls(tls_server: tuple[Server, Path]) -> None:
    server, cert = tls_server
    body = bytes(range(256)) * 256
    r = requests.post(server.url + "/probe?hdr&cat", data=body, timeout=30, verify=str(cert))
    assert r.content == body


def test_plain_http_on_the_tls_port_gets_no_module(tls_server: tuple[Server, Path]) -> None:
    server, _ = tls_server
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url.replace("https://", "http://") + "/probe?hdr&env", timeout=30)


def test_gunicorns_tls_on_wasmer_is_warned_about_at_start_up(
    tls_server: tuple[Server, Path], engine: str
) -> None:
    """wasmer cannot interrupt a module, and its watchdog cannot answer 504 inside a TLS
    session it does not hold (test_a_module_timing_out_over_tls): start-up says so."""
    server, _ = tls_server
    warnings = [line for line in server.log().splitlines() if "[WARNING] wagi: warning:" in line]
    if engine != "wasmer":
        assert warnings == []
        return
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith(
        "wagi: warning: engine wasmer cannot interrupt a module and gunicorn serves TLS itself "
        "(--certfile): a module past its timeout ends its client's connection without an "
        "answer instead of a 504; terminate TLS in nginx in front of wagi "
        "(docs/deployment.md), or use --engine wasmtime"
    )


def test_a_module_timing_out_over_tls(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    if engine == "wasmer":
        # wasmer cannot interrupt a module: the watchdog process answers the 504 on a
        # duplicate of the client's socket, in plain text, but over gunicorn's TLS the
        # connection carries TLS records the watchdog has no keys for.
        request.applymarker(
            pytest.mark.xfail(reason="the wasmer watchdog's 504 is not TLS", strict=True)
        )
    server, cert = start_tls_server(
        tmp_path, engine, '[[module]]\nroute = "/slow"\nmodule = "{probe}"\ntimeout = 1\n'
    )
    try:
        r = requests.get(server.url + "/slow?hdr&loop", timeout=30, verify=str(cert))
        assert (r.status_code, r.text) == (504, "504 Gateway Timeout: the module timed out\n")
    finally:
        server.stop()
