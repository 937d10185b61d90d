"""The gateway in this process, a real engine under it, spoken to through Werkzeug's test client.

The same ``build_worker`` a worker calls, without serving: no watchdog, and no kernel wall
(``kernel_wall = off``): a wall confines the threads that run modules for good, and
wasmtime's I/O threads, shared by every engine of the process, are made by their first
caller. The wall, gunicorn and real sockets are tested through gunicorn (tests/server).
"""

from __future__ import annotations

import pytest
from werkzeug.test import Client

import wagi
from wagi.config import load_config, settings
from wagi.server.gateway import Gateway, ResponseCut
from wagi.server.worker import build_worker

from ..support.servers import ENGINES, env_lines, write_config
from ..support.wat import WatModule

HEAD = "Content-Type: text/plain\n\n"
CONFIG = """
[[module]]
route = "/hello"
module = "{samples}/hello.wat"

[[module]]
route = "/probe/..."
module = "{probe}"
environment = {{ FROM_MODULE = "m" }}

[[module]]
route = "/slow"
module = "{probe}"
timeout = 0.5
"""
STREAMED = WatModule().print(HEAD + "first\n").busy(100).print("second\n")
CUT = WatModule().print(HEAD + "first\n").busy(100).print("second\n").trap()


@pytest.fixture(scope="module", params=ENGINES)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    tmp = tmp_path_factory.mktemp("gateway")
    modules = []
    for name, module in {"streamed": STREAMED, "cut": CUT}.items():
        path = tmp / f"{name}.wat"
        path.write_text(module.text())
        modules.append(f'[[module]]\nroute = "/{name}"\nmodule = "{path}"\n')
    config = write_config(tmp, CONFIG + "\n" + "\n".join(modules))
    server_settings = settings.load(
        environ={
            "WAGI_CONFIG": str(config),
            "WAGI_ENGINE": request.param,
            "WAGI_CACHE_DIR": str(tmp / "cache"),
            "WAGI_KERNEL_WALL": "off",
            "WAGI_ENV": "FROM_SERVER=s",
        }
    )
    worker = build_worker(server_settings, load_config(config))  # serving=False: no wall
    assert worker.engine.name == request.param
    gateway = Gateway(worker)
    return gateway


@pytest.fixture
def client(gateway: Gateway) -> Client:
    return Client(gateway)


def test_hello(client: Client) -> None:
    r = client.get("/hello")
    assert (r.status_code, r.headers["Content-Type"], r.data) == (
        200,
        "text/plain",
        b"Hello, world!\n",
    )
    assert r.headers["Content-Length"] == "14"


def test_healthz(client: Client) -> None:
    r = client.get("/healthz")
    assert (r.status_code, r.data) == (200, b"OK")


def test_the_cgi_environment_exact(client: Client) -> None:
    r = client.get(
        "/probe/a%20b?hdr&env",
        base_url="http://example.test:8080",
        headers={"X-Custom": "v", "Authorization": "Basic dXNlcjpwdw=="},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},  # what a server sets
    )
    assert r.status_code == 200
    env = env_lines(r.get_data(as_text=True))
    assert len(env.pop("X_REQUEST_ID")) == 32  # generated (tests/server/test_observability.py)
    assert env == {
        "AUTH_TYPE": "Basic",
        "CONTENT_LENGTH": "0",
        "CONTENT_TYPE": "",
        "FROM_MODULE": "m",
        "FROM_SERVER": "s",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "HTTP_HOST": "example.test:8080",
        "HTTP_X_CUSTOM": "v",
        "PATH_INFO": "/a b",
        "PATH_TRANSLATED": "/a b",
        "QUERY_STRING": "hdr&env",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_HOST": "127.0.0.1",
        "REMOTE_USER": "",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/probe/a%20b?hdr&env",
        "SCRIPT_NAME": "/probe",
        "SERVER_NAME": "example.test",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": f"WAGI/{wagi.__version__}",
        "X_FULL_URL": "http://example.test:8080/probe/a%20b?hdr&env",
        "X_MATCHED_ROUTE": "/probe/...",
        "X_RAW_PATH_INFO": "/a%20b",
    }


def test_the_body_arrives_on_stdin(client: Client) -> None:
    body = bytes(range(256)) * 4
    r = client.post("/probe?hdr&cat", data=body)
    assert (r.status_code, r.data) == (200, body)


def test_an_unknown_route_is_404(client: Client) -> None:
    r = client.get("/nowhere")
    assert (r.status_code, r.data) == (404, b"404 Not Found\n")


def test_a_nul_in_the_path_is_400(client: Client) -> None:
    r = client.get("/probe/a%00b?hdr&print=ran")
    assert (r.status_code, r.data) == (400, b"400 Bad Request: the path holds a NUL byte (%00)\n")


def test_a_trap_is_500(client: Client) -> None:
    r = client.get("/probe?hdr&print=partial&trap")
    assert (r.status_code, r.data) == (500, b"500 Internal Server Error: the module failed\n")


def test_a_module_past_its_timeout_is_504(gateway: Gateway, client: Client) -> None:
    if not gateway.worker.engine.capabilities.interruptible:
        pytest.skip("an engine that cannot interrupt a module needs a server's watchdog")
    r = client.get("/slow?hdr&loop")
    assert (r.status_code, r.data) == (504, b"504 Gateway Timeout: the module timed out\n")
    r = client.get("/probe?hdr&print=after")
    assert (r.status_code, r.data) == (200, b"after\n")


def test_a_long_run_streams_its_body(gateway: Gateway, client: Client) -> None:
    r = client.get("/streamed")
    assert (r.status_code, r.data) == (200, b"first\nsecond\n")
    if gateway.streams:  # sent as it came, past the hold: not measured
        assert "Content-Length" not in r.headers
    else:  # answered when the run ends
        assert r.headers["Content-Length"] == "13"


def test_a_failure_after_the_first_bytes_cuts_the_response(
    gateway: Gateway, client: Client
) -> None:
    r = client.get("/cut")
    if not gateway.streams:  # nothing was sent yet: a clean error
        assert (r.status_code, r.data) == (500, b"500 Internal Server Error: the module failed\n")
        return
    assert r.status_code == 200
    received = []
    with pytest.raises(ResponseCut, match=r"\[/cut\] trapped after 13 body bytes"):
        received.extend(r.response)  # the bytes sent, then the error: no clean end
    assert b"".join(received) == b"first\nsecond\n"
