"""The tests are laid out like the code, one folder per room (see "Running the tests" in README.md):

- ``tests/unit``: pure functions (configuration, routing, the CGI request and response,
  settings, Landlock, the doctests of ``wagi/``); no engine run, no server.
- ``tests/engines``: a real engine in this process (wasmtime, wasmer where it imports), and the
  gateway driven in-process through Werkzeug's test client.
- ``tests/server``: real gunicorn serving real modules, spoken to over real HTTP.
- ``tests/system``: wagi among other real programs: nginx, a browser, an OCI registry,
  systemd, Kubernetes manifests, the documentation site, a fleet behind a proxy.

Each test is marked with its folder's name (``-m unit`` ...), and a test elsewhere that
starts gunicorn carries the ``server`` mark itself; ``./run-tests --fast`` runs
``unit`` and ``engines`` without ``server``. Shared helpers live in ``tests/support``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support.servers import ENGINES, Server, start_gunicorn, write_config

ROOMS = ("unit", "engines", "server", "system")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the folder it lives in; a server fixture marks it ``server``."""
    for item in items:
        room = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if room in ROOMS:
            item.add_marker(room)
        if "server_factory" in getattr(item, "fixturenames", ()):
            item.add_marker("server")


@pytest.fixture(params=ENGINES, scope="module")
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def factory(config_body: str, engine: str, **kwargs: object) -> Server:
        tmp = tmp_path_factory.mktemp("server")
        config = write_config(tmp, config_body)
        server = start_gunicorn(tmp, config, engine, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
