"""Volumes, read-only volumes, escapes and memory limits (docs/security.md), through gunicorn.

Engines that cannot honour a setting refuse it at start-up (see test_cli); these
tests run on every engine that accepts the configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from wagi.config import load_config
from wagi.engines import ENGINE_NAMES
from wagi.execution.engine_choice import refusals

from ..support.servers import ENGINES, Server, write_config

VOLUME_CONFIG = """
[[module]]
route = "/fs"
module = "{probe}"
volumes = {{ "/data" = "{data}", "/ro" = {{ path = "{ro}", read_only = true }} }}

[[module]]
route = "/small"
module = "{probe}"
max_memory = "16 MiB"
"""


def engines_accepting(config_text: str, tmp: Path) -> list[str]:
    config = load_config(write_config(tmp, config_text))
    return [e for e in ENGINES if not refusals(e, config, None)]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("volumes")
    data, ro, outside = root / "data", root / "ro", root / "outside"
    for d in (data, ro, outside):
        d.mkdir()
    (data / "hello.txt").write_text("hello from the volume\n")
    (ro / "fixed.txt").write_text("read only\n")
    (outside / "secret.txt").write_text("TOP SECRET\n")
    (root / "sibling.txt").write_text("SIBLING\n")
    os.symlink(outside / "secret.txt", data / "abs-link")
    os.symlink("../outside/secret.txt", data / "rel-link")
    os.symlink(str(outside), data / "dir-link")
    return {"root": root, "data": data, "ro": ro, "outside": outside}


def every_engine_that_accepts_volumes() -> list[str]:
    from wagi.engines import engine_class

    return [e for e in ENGINES if engine_class(e).capabilities.volumes]


@pytest.fixture(scope="module", params=every_engine_that_accepts_volumes())
def fs(
    request: pytest.FixtureRequest, layout: dict[str, Path], server_factory: Callable[..., Server]
) -> Server:
    text = VOLUME_CONFIG.replace("{data}", str(layout["data"])).replace("{ro}", str(layout["ro"]))
    return server_factory(text, str(request.param), workers=1)


def test_some_engine_runs_the_volume_tests() -> None:
    # A skip is not a pass: wasmtime is on every leg and honours volumes.
    assert "wasmtime" in every_engine_that_accepts_volumes()
    assert set(ENGINE_NAMES) >= set(ENGINES)


def test_read_write_volume(fs: Server, layout: dict[str, Path]) -> None:
    r = fs.get("/fs?hdr&readfile=/data/hello.txt&writefile=/data/new.txt:written")
    assert r.text == "hello from the volume\nOK\n"
    assert (layout["data"] / "new.txt").read_text() == "written"


def test_read_only_volume_refuses_writes(fs: Server, layout: dict[str, Path]) -> None:
    r = fs.get(
        "/fs?hdr&readfile=/ro/fixed.txt&writefile=/ro/fixed.txt:changed&writefile=/ro/new.txt:x"
    )
    lines = r.text.splitlines()
    assert lines[0] == "read only"
    assert lines[1].startswith("ERR ") and lines[2].startswith("ERR ")
    assert (layout["ro"] / "fixed.txt").read_text() == "read only\n"
    assert not (layout["ro"] / "new.txt").exists()


@pytest.mark.parametrize(
    "path",
    [
        "/data/../sibling.txt",
        "/data/../outside/secret.txt",
        "/data/abs-link",
        "/data/rel-link",
        "/data/dir-link/secret.txt",
        "../sibling.txt",
        "/outside/secret.txt",
        str(Path("/etc/passwd")),
    ],
)
def test_reads_cannot_escape_the_volume(fs: Server, path: str) -> None:
    r = fs.get(f"/fs?hdr&readfile={path}")
    assert r.status_code == 200
    assert r.text.startswith("ERR "), r.text
    assert "SECRET" not in r.text and "SIBLING" not in r.text


def test_writes_cannot_escape_the_volume(fs: Server, layout: dict[str, Path]) -> None:
    r = fs.get("/fs?hdr&writefile=/data/rel-link:pwned&writefile=/data/../pwned.txt:x")
    assert all(line.startswith("ERR ") for line in r.text.splitlines()), r.text
    assert (layout["outside"] / "secret.txt").read_text() == "TOP SECRET\n"
    assert not (layout["root"] / "pwned.txt").exists()


def test_listing_the_parent_is_refused(fs: Server) -> None:
    r = fs.get("/fs?hdr&ls=/data/..&ls=/data/dir-link")
    assert "sibling.txt" not in r.text and "secret.txt" not in r.text
    assert all(line.startswith("ERR ") for line in r.text.splitlines()), r.text


def test_module_made_symlinks_cannot_escape(fs: Server, layout: dict[str, Path]) -> None:
    r = fs.get(
        "/fs?hdr&symlink=../outside/secret.txt:/data/mine&readfile=/data/mine"
        "&symlink=/etc/passwd:/data/mine2&readfile=/data/mine2"
    )
    assert "SECRET" not in r.text and "root:" not in r.text
    assert r.text.splitlines()[1].startswith("ERR ")
    assert r.text.splitlines()[3].startswith("ERR ")


def test_memory_limit(fs: Server) -> None:
    assert fs.get("/small?hdr&grow=4").text == "grew\n"
    assert fs.get("/small?hdr&grow=64").text == "failed\n"
    # The unlimited route on the same worker still grows.
    assert fs.get("/fs?hdr&grow=64").text == "grew\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_memory_limit_on_every_engine(
    engine: str, server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    config = (
        '[[module]]\nroute = "/small"\nmodule = "{probe}"\nmax_memory = "16 MiB"\n'
        '[[module]]\nroute = "/big"\nmodule = "{probe}"\n'
    )
    server = server_factory(config, engine, workers=1)
    assert server.get("/small?hdr&grow=4").text == "grew\n"
    assert server.get("/small?hdr&grow=64").text == "failed\n"
    assert server.get("/big?hdr&grow=64").text == "grew\n"


def test_a_memory_limit_below_the_starting_memory_stops_start_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    from ..support.servers import ROOT

    fat = '(module (memory (export "memory") 300) (func (export "_start")))'
    (tmp_path / "fat.wat").write_text(fat)
    config = write_config(
        tmp_path, '[[module]]\nroute = "/fat"\nmodule = "fat.wat"\nmax_memory = "1 MiB"\n'
    )
    for engine in ENGINES:
        result = subprocess.run(
            [sys.executable, "-m", "wagi", "check", "--config", str(config), "--engine", engine],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "(route '/fat'): " in result.stderr
        assert "more than max_memory" in result.stderr
