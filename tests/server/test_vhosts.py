"""Virtual hosts through real gunicorn: a route's ``host`` (docs/configuration.md, "Routing").

Each probe route prints its own name, so a response says exactly which route answered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ..support.servers import Server, refused_start, wagi, write_config

CONFIG = """\
[[module]]
route = "/..."
module = "{probe}"
argv = ["probe", "hdr", "print=any"]

[[module]]
route = "/api"
module = "{probe}"
argv = ["probe", "hdr", "print=api"]

[[module]]
route = "/..."
host = "admin.example.com"
module = "{probe}"
argv = ["probe", "hdr", "print=admin"]

[[module]]
route = "/api"
host = "Shop.Example.com"
module = "{probe}"
argv = ["probe", "hdr", "print=shop"]

# Its _routes sub-routes (/routes/hello, /routes/goodbye/...) answer this host only.
[[module]]
route = "/routes/..."
host = "routes.example.com"
module = "{samples}/routes.wasm"
"""


@pytest.fixture(scope="module")
def server(engine: str, server_factory: Callable[..., Server]) -> Server:
    return server_factory(CONFIG, engine, workers=1)


@pytest.fixture(scope="module")
def proxied(engine: str, server_factory: Callable[..., Server]) -> Server:
    return server_factory(CONFIG, engine, workers=1, extra_env={"WAGI_TRUSTED_PROXY_HOPS": "1"})


def answer(server: Server, path: str, host: str, **headers: str) -> tuple[int, bytes]:
    r = server.get(path, headers={"Host": host, **headers})
    return r.status_code, r.content


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        # A host's routes come first: admin's /... beats /api, which is more specific.
        ("admin.example.com", "/api", b"admin\n"),
        ("admin.example.com", "/", b"admin\n"),
        # Same path, with and without host: the host's route wins.
        ("shop.example.com", "/api", b"shop\n"),
        # The host has routes, none matches: the routes of every host answer.
        ("shop.example.com", "/other", b"any\n"),
        # A host with no routes of its own.
        ("www.example.com", "/api", b"api\n"),
        ("www.example.com", "/x", b"any\n"),
        ("127.0.0.1", "/api", b"api\n"),
        # Port dropped, case ignored, a trailing dot ignored.
        ("ADMIN.Example.COM:8443", "/api", b"admin\n"),
        ("admin.example.com.:80", "/api", b"admin\n"),
        ("SHOP.example.com:3000", "/api", b"shop\n"),
        # An IPv6 literal is a host like any other (no route has it).
        ("[::1]:3000", "/api", b"api\n"),
        # A host that only resembles one: admin.example.com.evil, evil-admin.example.com
        ("admin.example.com.evil", "/api", b"api\n"),
        ("evil-admin.example.com", "/api", b"api\n"),
    ],
)
def test_the_host_picks_the_route(server: Server, host: str, path: str, expected: bytes) -> None:
    assert answer(server, path, host) == (200, expected)


def test_subroutes_answer_their_parents_host_only(server: Server) -> None:
    status, body = answer(server, "/routes/hello", "routes.example.com")
    assert status == 200
    assert body.startswith(b"This is the routes sample: export hello ran.\n")
    assert b"X_MATCHED_ROUTE=/routes/hello\n" in body
    assert answer(server, "/routes/hello", "other.example.com") == (200, b"any\n")
    assert answer(server, "/routes/goodbye/x", "admin.example.com") == (200, b"admin\n")


def test_healthz_answers_every_host(server: Server) -> None:
    for host in ("admin.example.com", "routes.example.com", "www.example.com"):
        assert answer(server, "/healthz", host) == (200, b"OK")


def test_a_request_without_host_is_for_the_default_host(server: Server) -> None:
    # HTTP/1.0 needs no Host: the request is for --default-host (localhost), as the
    # SERVER_NAME the module gets says.
    raw = server.raw(b"GET /api HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ") or raw.startswith(b"HTTP/1.0 200 "), raw
    assert raw.endswith(b"\r\n\r\napi\n")


def test_the_trusted_proxys_host_decides(proxied: Server) -> None:
    forwarded = {"X-Forwarded-Host": "Admin.Example.com:443"}
    assert answer(proxied, "/api", "127.0.0.1:8080", **forwarded) == (200, b"admin\n")
    # With several hops the last one (the trusted proxy's) counts.
    forwarded = {"X-Forwarded-Host": "admin.example.com, shop.example.com"}
    assert answer(proxied, "/api", "127.0.0.1", **forwarded) == (200, b"shop\n")
    # Without X-Forwarded-Host, the Host header.
    assert answer(proxied, "/api", "shop.example.com") == (200, b"shop\n")


def test_an_untrusted_forwarded_host_is_only_a_header(server: Server) -> None:
    forwarded = {"X-Forwarded-Host": "admin.example.com"}
    assert answer(server, "/api", "www.example.com", **forwarded) == (200, b"api\n")


def test_check_shows_the_host_of_each_route(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    result = wagi("check", "--config", str(config), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    table = [line.split()[:2] for line in result.stdout.decode().splitlines()[1:]]
    assert [row for row in table if row[1].startswith("/")] == [
        ["admin.example.com", "/..."],
        ["shop.example.com", "/api"],
        ["routes.example.com", "/routes/hello"],
        ["routes.example.com", "/routes/goodbye/..."],
        ["routes.example.com", "/routes/..."],
        ["*", "/api"],
        ["*", "/..."],
    ]


def test_a_duplicate_host_and_route_stops_start_up(tmp_path: Path, engine: str) -> None:
    config = write_config(
        tmp_path,
        CONFIG + '[[module]]\nroute = "/api"\nhost = "shop.example.COM."\nmodule = "{probe}"\n',
    )
    log = refused_start(tmp_path, config, engine)
    assert (
        f"{config}: [[module]] #6 (route '/api'), key 'route': duplicate route for host "
        "'shop.example.com', already declared by [[module]] #4"
    ) in log


def test_a_bad_host_stops_start_up(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, '[[module]]\nroute = "/"\nhost = "admin.example.com:8080"\nmodule = "{probe}"\n'
    )
    result = wagi("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.decode() == (
        f"wagi: error: {config}: [[module]] #1 (route '/'), key 'host': a host is a name "
        "without a port (requests match whatever their port), got 'admin.example.com:8080'\n"
    )
