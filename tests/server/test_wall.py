"""The kernel wall in a real gunicorn worker, on both engines.

wasmer's WASI layer lets a module leave its mapped directories; with Linux Landlock
each route with volumes runs on threads the kernel confines to that route's volumes
(wagi.execution.sites). On wasmtime every thread that runs modules is confined alike, to
what all routes need (wagi.execution.wall). The wasmer tests run where wasmer imports (the
CPython 3.10 leg); the wall itself is tested on every leg by tests/unit/test_landlock.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.servers import (
    ENGINES,
    MODULES,
    PROBE,
    ROOT,
    Server,
    start_gunicorn,
    wagi,
    write_config,
)
from wagi.execution import landlock

pytestmark = pytest.mark.skipif(not landlock.availability().ok, reason=landlock.availability().why)
needs_wasmer = pytest.mark.skipif(
    "wasmer" not in ENGINES, reason="wasmer imports on CPython 3.10 only"
)


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


@needs_wasmer
def test_a_module_reads_and_writes_its_own_volume(walled: tuple[Server, Path]) -> None:
    server, root = walled
    r = server.get(
        "/p?hdr&readfile=/data/in.txt&writefile=/data/new.txt:hello&readfile=/data/new.txt"
    )
    assert (r.status_code, r.text) == (200, "inside\nOK\nhello")
    assert (root / "data" / "new.txt").read_text() == "hello"
    assert server.get("/other?hdr&readfile=/other/secret.txt").text == "another route's secret\n"
    body = (
        bytes(range(256)) * 8192
    )  # 2 MiB: spooled into the worker's folder, which the wall grants
    r = server.post("/p?hdr&cat", data=body)
    assert (r.status_code, r.content) == (200, body)


@needs_wasmer
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


@needs_wasmer
@pytest.mark.parametrize("target", ["/etc/passwd", "OTHER/secret.txt", "ROOT/host.txt"])
def test_absolute_paths_past_wasmers_wasi_layer_meet_the_wall(
    walled: tuple[Server, Path], target: str
) -> None:
    """escaper.wat hands an absolute host path straight to path_open, which wasmer's own
    WASI layer would follow (tests/unit/test_landlock.py shows it does without the wall)."""
    server, root = walled
    path = target.replace("OTHER", str(root / "other")).replace("ROOT", str(root))
    read = server.get(f"/esc?x&3&r&{path}")
    assert "root:" not in read.text and "secret" not in read.text and "host file" not in read.text
    written = server.get(f"/esc?x&3&w&{root}/pwned.txt")
    assert written.status_code == 500  # the module printed "ERR 63", which is not CGI
    assert not (root / "pwned.txt").exists()
    assert "ERR 63" not in read.text  # the details stay in the log, not the response
    assert "a confined thread is up" in server.log()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_volumes_start_at_fd_3_on_every_engine(
    tmp_path: Path, server_factory: Callable[..., Server], engine: str
) -> None:
    """Code that takes its first preopen at fd 3 without asking (Grain's runtime, so WAGI's
    fileserver) finds the first volume there; wasmer used to show a virtual / at fd 3.

    escaper.wat opens a path relative to the fd it is given and prints the file: each file
    here is itself a CGI response, so the route answers 200 only if the right one is found.
    """
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "page").write_text(f"Content-Type: text/plain\n\nthe {name} volume\n")
    server = server_factory(
        f"""
        [[module]]
        route = "/files"
        module = "{MODULES / "escaper.wat"}"
        argv = "${{ARGS}}"
        volumes = {{ "/z" = "{tmp_path / "first"}", "/a" = "{tmp_path / "second"}" }}
        """.replace("{", "{{").replace("}", "}}"),
        engine,
        workers=1,
    )
    for fd, name in (("3", "first"), ("4", "second")):
        r = server.get(f"/files?x&{fd}&r&page")
        assert (r.status_code, r.text) == (200, f"the {name} volume\n")


def probe_routes(volumes: dict[str, Path | None]) -> str:
    """A configuration (for ``server_factory``) that runs the probe at each route, with one
    volume of the route's own name, or none."""
    entries = []
    for route, host in volumes.items():
        entry = f'[[module]]\nroute = "{route}"\nmodule = "{{probe}}"\n'
        if host is not None:
            entry += f'volumes = {{{{ "{route}" = "{host}" }}}}\n'
        entries.append(entry)
    return "\n".join(entries)


# -- both engines ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_every_route_keeps_its_own_volume_run_after_run(
    tmp_path: Path, server_factory: Callable[..., Server], engine: str
) -> None:
    """Two routes, two volumes, served in turn by one worker.

    On wasmtime the WASI file I/O of every route runs on the same helper threads: walls
    per route would refuse the second route its own volume (tests/unit/test_landlock.py), so
    every run shares one wall, and each route still sees only its own volume.
    """
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text(f"volume {name}\n")
    server = server_factory(
        probe_routes({"/a": tmp_path / "a", "/b": tmp_path / "b"}), engine, workers=1
    )
    for _ in range(3):
        for name in ("a", "b"):
            r = server.get(f"/{name}?hdr&readfile=/{name}/f.txt&writefile=/{name}/w.txt:{name}")
            assert (r.status_code, r.text) == (200, f"volume {name}\nOK\n")
    elsewhere = server.get("/a?hdr&readfile=/b/f.txt&ls=/").text
    if engine == "wasmer":  # its virtual root holds the route's volumes
        assert elsewhere == "ERR ENOENT (No such file or directory)\n/a\n"
    else:  # no preopen holds these paths
        assert elsewhere == "ERR ENOTCAPABLE (Capabilities insufficient)\n" * 2
    assert (tmp_path / "b" / "w.txt").read_text() == "b"
    confined = "this worker is confined" if engine == "wasmtime" else "a confined thread is up"
    assert f"{confined}: Landlock ABI" in server.log()


def test_a_wasmtime_worker_runs_every_module_behind_the_wall(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """What a run needs from the host passes the wall: a spooled request body (over 1 MiB,
    in the worker's folder), a scratch directory, ``_routes`` at start-up; nothing else."""
    server = server_factory(
        f"""
        [[module]]
        route = "/p/..."
        module = "{{probe}}"
        tmp = true

        [[module]]
        route = "/routes"
        module = "{ROOT / "samples" / "routes.wasm"}"
        """,
        "wasmtime",
        workers=1,
    )
    body = bytes(range(256)) * 8192  # 2 MiB
    r = server.post("/p?hdr&cat", data=body)
    assert (r.status_code, r.content) == (200, body)
    r = server.get("/p?hdr&writefile=/tmp/x:scratch&readfile=/tmp/x")
    assert (r.status_code, r.text) == (200, "OK\nscratch")
    assert "export hello ran" in server.get("/routes/hello").text
    log = server.log()
    assert "this worker is confined: Landlock ABI" in log
    assert f"read-write {tempfile.gettempdir()}/wagi-scratch-" in log
    assert "nothing else on the file system; no TCP bind or connect" in log


@pytest.mark.parametrize("engine", ENGINES)
def test_kernel_wall_off(tmp_path: Path, engine: str) -> None:
    (tmp_path / "data").mkdir()
    config = write_config(
        tmp_path, '[[module]]\nroute = "/v"\nmodule = "{probe}"\nvolumes = {{ "/data" = "data" }}\n'
    )
    result = wagi("check", "--config", str(config), "--engine", engine, "--kernel-wall", "off")
    if engine == "wasmer":  # its volumes need the wall
        assert result.returncode == 2
        assert (
            "key 'volumes': wasmer does not confine a module to its volumes (absolute paths "
            "and symlinks reach any host file) and the kernel wall is not available (it is "
            "turned off (--kernel-wall off))"
        ) in result.stderr.decode()
        return
    assert result.returncode == 0, result.stderr
    assert "  no kernel wall: it is turned off (--kernel-wall off)\n" in result.stdout.decode()
    server = start_gunicorn(
        tmp_path, config, engine, workers=1, extra_env={"WAGI_KERNEL_WALL": "off"}
    )
    try:
        assert server.get("/v?hdr&print=unwalled").text == "unwalled\n"
        assert "confined thread" not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("engine", ENGINES)
def test_kernel_wall_required_where_the_kernel_has_it(tmp_path: Path, engine: str) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    result = wagi("check", "--config", str(config), "--engine", engine, "--kernel-wall", "required")
    assert result.returncode == 0, result.stderr


def test_no_writable_volume_may_hold_the_artifact_cache(tmp_path: Path) -> None:
    (tmp_path / "data" / "cache").mkdir(parents=True)
    config = write_config(
        tmp_path, '[[module]]\nroute = "/v"\nmodule = "{probe}"\nvolumes = {{ "/data" = "data" }}\n'
    )
    args = ("check", "--config", str(config), "--engine", "wasmtime")
    volume, cache = tmp_path / "data", tmp_path / "data" / "cache"
    result = wagi(*args, "--cache-dir", str(cache))
    assert result.returncode == 2
    assert result.stderr.decode() == (
        f"wagi: error: {config}: [[module]] #1 (route '/v'), key 'volumes': {volume} holds the "
        f"compiled-artifact cache ({cache}), native code every worker loads; no module may "
        "write it: choose another --cache-dir, or make the volume read-only\n"
    )
    assert wagi(*args, "--cache-dir", str(tmp_path / "cache")).returncode == 0


@needs_wasmer
def test_wasmer_lists_routes_of_a_module_with_volumes_behind_the_wall(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """``_routes`` runs where the route's requests run: on its confined thread."""
    (tmp_path / "data").mkdir()
    server = server_factory(
        f"""
        [[module]]
        route = "/routes"
        module = "{ROOT / "samples" / "routes.wasm"}"
        volumes = {{{{ "/data" = "{tmp_path / "data"}" }}}}
        """,
        "wasmer",
        workers=1,
    )
    r = server.get("/routes/hello")
    assert (r.status_code, r.text.splitlines()[0]) == (
        200,
        "This is the routes sample: export hello ran.",
    )
    assert "[[module]] #1 (route '/routes'): a confined thread is up" in server.log()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_volume_gone_fails_its_route_only(
    tmp_path: Path, server_factory: Callable[..., Server], engine: str
) -> None:
    """A volume that disappeared fails its route only, every other route goes on: wasmer's
    thread confined after it left it out of its wall; a wasmtime worker, confined at
    start-up, holds every route's volumes and the preopen fails."""
    (tmp_path / "gone").mkdir()
    server = server_factory(
        probe_routes({"/gone": tmp_path / "gone", "/fine": None}), engine, workers=1
    )
    (tmp_path / "gone").rmdir()
    for _ in range(2):
        assert server.get("/fine?hdr&print=fine").text == "fine\n"
        assert server.get("/gone?hdr&print=never").status_code == 500
    log = server.log()
    if engine == "wasmer":
        assert f"the kernel wall leaves out what no longer exists: {tmp_path / 'gone'}; " in log
    assert "can no longer run modules" not in log
