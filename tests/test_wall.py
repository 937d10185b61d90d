"""Volumes on wasmer, served behind the kernel wall, through real gunicorn.

wasmer's WASI layer lets a module leave its mapped directories; with Linux Landlock
each route with volumes runs on threads the kernel confines to that route's volumes
(wagi.confined). These tests run where wasmer imports (the CPython 3.10 leg); the wall
itself is tested on every leg by tests/test_landlock.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ENGINES, MODULES, PROBE, Server
from wagi import landlock

pytestmark = [
    pytest.mark.skipif("wasmer" not in ENGINES, reason="wasmer imports on CPython 3.10 only"),
    pytest.mark.skipif(not landlock.availability().ok, reason=landlock.availability().why),
]


@pytest.fixture(scope="module")
def walled(
    tmp_path_factory: pytest.TempPathFactory, server_factory: Callable[..., Server]
) -> tuple[Server, Path]:
    root = tmp_path_factory.mktemp("walled")
    (root / "data").mkdir()
    (root / "data" / "in.txt").write_text("inside\n")
    (root / "other").mkdir()
    (root / "other" / "secret.txt").write_text("another route's secret\n")
    (root / "host.txt").write_text("a host file\n")
    (root / "data" / "link").symlink_to(root / "host.txt")
    config = f"""
        [[module]]
        route = "/p/..."
        module = "{PROBE}"
        volumes = {{ "/data" = "{root / "data"}" }}

        [[module]]
        route = "/esc"
        module = "{MODULES / "escaper.wat"}"
        argv = "${{ARGS}}"
        volumes = {{ "/data" = "{root / "data"}" }}

        [[module]]
        route = "/other/..."
        module = "{PROBE}"
        volumes = {{ "/other" = "{root / "other"}" }}
        """
    # server_factory formats the text ({probe} and friends): keep these braces.
    server = server_factory(config.replace("{", "{{").replace("}", "}}"), "wasmer", workers=1)
    return server, root


def test_a_module_reads_and_writes_its_own_volume(walled: tuple[Server, Path]) -> None:
    server, root = walled
    r = server.get(
        "/p?hdr&readfile=/data/in.txt&writefile=/data/new.txt:hello&readfile=/data/new.txt"
    )
    assert (r.status_code, r.text) == (200, "inside\nOK\nhello")
    assert (root / "data" / "new.txt").read_text() == "hello"
    assert server.get("/other?hdr&readfile=/other/secret.txt").text == "another route's secret\n"


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        ("readfile=/data/link", "ERR EPERM (Operation not permitted)\n"),  # the kernel says no
        ("readfile=/data/../other/secret.txt", "ERR ENOENT (No such file or directory)\n"),
        ("ls=/", "/data\n"),
    ],
)
def test_nothing_outside_the_volume_is_reachable(
    walled: tuple[Server, Path], query: str, answer: str
) -> None:
    server, _root = walled
    r = server.get(f"/p?hdr&{query}")
    assert (r.status_code, r.text) == (200, answer)


@pytest.mark.parametrize("target", ["/etc/passwd", "OTHER/secret.txt", "ROOT/host.txt"])
def test_absolute_paths_past_wasmers_wasi_layer_meet_the_wall(
    walled: tuple[Server, Path], target: str
) -> None:
    """escaper.wat hands an absolute host path straight to path_open, which wasmer's own
    WASI layer would follow (tests/test_landlock.py shows it does without the wall)."""
    server, root = walled
    path = target.replace("OTHER", str(root / "other")).replace("ROOT", str(root))
    read = server.get(f"/esc?x&4&r&{path}")
    assert "root:" not in read.text and "secret" not in read.text and "host file" not in read.text
    written = server.get(f"/esc?x&4&w&{root}/pwned.txt")
    assert written.status_code == 500  # the module printed "ERR 63", which is not CGI
    assert not (root / "pwned.txt").exists()
    assert "ERR 63" not in read.text  # the details stay in the log, not the response
    assert "a confined thread is up" in server.log()
