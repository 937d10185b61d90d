"""A private scratch directory per request (``tmp``), through gunicorn.

Runs on every engine that can confine a module to a directory and bound what it
writes (wasmtime); the others refuse ``tmp`` at start-up, tested here too. The
server's ``TMPDIR`` is a folder of the test, so the scratch area can be watched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from wagi.config import ConfigError, Scratch, load_config
from wagi.engines import engine_class
from wagi.execution.engine_choice import choose_engine, refusals

from ..support.servers import ENGINES, MODULES, ROOT, Server, write_config

FILES = MODULES / "files.wasm"


def engines_with_scratch() -> list[str]:
    return [
        e
        for e in ENGINES
        if engine_class(e).capabilities.volumes and engine_class(e).capabilities.write_budget
    ]


CONFIG = """
[[module]]
route = "/f"
module = "{modules}/files.wasm"
tmp = {{ path = "/tmp", max_size = "1 MiB" }}
timeout = 2

[[module]]
route = "/scratch"
module = "{modules}/files.wasm"
tmp = "/scratch"

[[module]]
route = "/none"
module = "{modules}/files.wasm"
"""


@pytest.fixture(scope="module", params=engines_with_scratch())
def area(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    server_factory: Callable[..., Server],
) -> tuple[Server, Path]:
    tmpdir = tmp_path_factory.mktemp("tmpdir")
    server = server_factory(
        CONFIG, str(request.param), workers=1, extra_env={"TMPDIR": str(tmpdir)}
    )
    return server, tmpdir / f"wagi-scratch-{os.getuid()}"


def write_toml(directory: Path, text: str) -> Path:
    """A modules.toml exactly as given (no placeholders: TOML tables use braces)."""
    path = directory / "modules.toml"
    path.write_text(text)
    return path


def leftovers(root: Path) -> list[str]:
    """Everything in the scratch area but the (empty) worker folders."""
    found = []
    for folder in root.iterdir():
        found += [f"{folder.name}/{p.name}" for p in folder.iterdir()]
    return found


def test_some_engine_runs_the_scratch_tests() -> None:
    assert "wasmtime" in engines_with_scratch()


def test_each_request_gets_an_empty_private_directory(area: tuple[Server, Path]) -> None:
    server, root = area
    r = server.get("/f?hdr&ls=/tmp&write=/tmp/a:first&read=/tmp/a&ls=/tmp")
    assert r.text == "ls /tmp:\nwrite OK\nfirst\nls /tmp: a\n"
    # The next request sees none of it, and nothing is left on the host.
    r = server.get("/f?hdr&ls=/tmp&read=/tmp/a")
    assert r.text == "ls /tmp:\nread ERR ENOENT\n"
    assert leftovers(root) == []
    r = server.get("/scratch?hdr&write=/scratch/b:x&ls=/scratch&ls=/tmp")
    assert r.text == "write OK\nls /scratch: b\nls ERR ENOTCAPABLE\n"
    r = server.get("/none?hdr&write=/tmp/b:x")
    assert r.text == "write ERR ENOTCAPABLE\n"
    assert leftovers(root) == []


@pytest.mark.parametrize(
    ("ops", "status"), [("exit=3", 500), ("trap", 500), ("loop", None), ("ls=/tmp", 200)]
)
def test_the_directory_is_removed_whatever_the_ending(
    area: tuple[Server, Path], ops: str, status: int | None
) -> None:
    server, root = area
    # A run that outlives wagi's 5 ms hold streams its body: a failure then cuts the
    # response instead of answering 500/504. Either way the directory must go.
    try:
        r = server.get(f"/f?hdr&write=/tmp/a:x&fill=/tmp/b:1000&{ops}")
        assert r.status_code == (status or 504)
    except requests.exceptions.ChunkedEncodingError:
        assert status != 200
    time.sleep(0.5)  # a cut run ends at its deadline, then its directory goes
    assert leftovers(root) == []


def test_writes_are_bounded_by_max_size(area: tuple[Server, Path]) -> None:
    server, root = area
    # 1 MiB: the file's creation costs 4 KiB, then 64 KiB writes fit 15 times.
    r = server.get("/f?hdr&fill=/tmp/big:2000000&pfill=/tmp/p:100000&ls=/tmp")
    assert r.text == (
        "fill /tmp/big ERR EDQUOT wrote=983040\npfill /tmp/p ERR EDQUOT wrote=0\nls /tmp: big p\n"
    )
    r = server.get("/f?hdr&mkdirs=/tmp/d:1000")
    assert r.text == "mkdirs made=256 ERR EDQUOT\n"
    # The budget is per request.
    r = server.get("/f?hdr&fill=/tmp/big:900000")
    assert r.text == "fill /tmp/big wrote=900000\n"
    assert leftovers(root) == []


def test_a_killed_worker_leaves_nothing_behind(area: tuple[Server, Path]) -> None:
    server, root = area
    done: list[object] = []

    def slow() -> None:
        try:
            done.append(
                requests.get(server.url + "/scratch?hdr&write=/scratch/a:x&loop", timeout=30)
            )
        except requests.RequestException as exc:
            done.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 20
    while not leftovers(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    (busy,) = leftovers(root)
    worker = int(busy.split("/")[0][1:])
    os.kill(worker, signal.SIGKILL)
    thread.join(30)
    assert done and not isinstance(done[0], requests.Response)
    # gunicorn starts a new worker; it removes the dead one's folder before serving.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if server.get("/f?hdr&ls=/tmp").text == "ls /tmp:\n":
                break
        except requests.RequestException:
            time.sleep(0.1)
    assert not (root / f"w{worker}").exists()
    assert leftovers(root) == []


def test_leftovers_of_dead_processes_are_removed_at_worker_start(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    root = tmp_path / f"wagi-scratch-{os.getuid()}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = root / f"w{int(dead.stdout)}" / "tmpabc"
    alive = root / f"w{os.getpid()}" / "tmpdef"
    for folder in (stale, alive):
        folder.mkdir(parents=True)
        (folder / "file").write_text("x")
    root.chmod(0o700)
    for folder in (stale.parent, alive.parent):
        folder.chmod(0o700)
    server = server_factory(CONFIG, "wasmtime", workers=1, extra_env={"TMPDIR": str(tmp_path)})
    assert server.get("/f?hdr&ls=/tmp").text == "ls /tmp:\n"
    assert not stale.parent.exists()
    assert (alive / "file").read_text() == "x"  # a live process's folder is not ours to remove


# -- configuration and engines --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", Scratch("/tmp", 64 << 20)),
        ('"/scratch/"', Scratch("/scratch", 64 << 20)),
        ('{ max_size = "8 MiB" }', Scratch("/tmp", 8 << 20)),
        ('{ path = "/work", max_size = 4096 }', Scratch("/work", 4096)),
        ("false", None),
    ],
)
def test_tmp_forms(tmp_path: Path, value: str, expected: Scratch | None) -> None:
    path = write_toml(tmp_path, f'[[module]]\nroute = "/f"\nmodule = "{FILES}"\ntmp = {value}\n')
    assert load_config(path).modules[0].tmp == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"tmp"', "the guest path must be absolute and not '/', got 'tmp'"),
        ('"/"', "the guest path must be absolute and not '/'"),
        ("3", "expected true, a guest path such as"),
        ('{ size = "1 MiB" }', "expected true, a guest path such as"),
        ('{ max_size = "lots" }', "max_size: expected a size"),
        ('"/data"', "'/data' is already a volume"),
    ],
)
def test_bad_tmp_names_the_key(tmp_path: Path, value: str, message: str) -> None:
    path = write_toml(
        tmp_path,
        f'[[module]]\nroute = "/f"\nmodule = "{FILES}"\ntmp = {value}\n'
        f'volumes = {{ "/data" = "{tmp_path}" }}\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: [[module]] #1 (route '/f'), key 'tmp': {message}" in str(info.value)


def test_engines_without_a_wall_refuse_tmp(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, CONFIG))
    for name in ("wasmer", "wasmtime"):
        caps = engine_class(name).capabilities
        problems = refusals(name, config, None)
        if caps.volumes and caps.write_budget:
            assert problems == []
        else:
            assert len(problems) == 2  # /f and /scratch
            assert "route '/f'), key 'tmp': wasmer cannot confine a module" in problems[0]
    if "wasmer" in ENGINES:
        assert choose_engine("auto", config, None).name == "wasmtime"


@pytest.mark.skipif("wasmer" not in ENGINES, reason="wasmer does not import here")
def test_wasmer_refuses_tmp_at_start_up(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "wagi", "check", "--config", str(config), "--engine", "wasmer"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "key 'tmp': wasmer cannot confine a module to a directory" in result.stderr


@pytest.mark.skipif("wasmer" not in ENGINES, reason="wasmer does not import here")
def test_wasmer_refuses_a_write_budget_it_cannot_enforce() -> None:
    from wagi.engines.base import EngineError, Invocation, Limits
    from wagi.engines.wasmer import WasmerEngine

    engine = WasmerEngine()
    module = engine.load(FILES)
    with pytest.raises(EngineError, match="cannot bound what a module writes to files"):
        engine.run(module, Invocation(argv=["/f"], limits=Limits(max_write=1 << 20)))
