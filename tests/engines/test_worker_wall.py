"""The wall around a whole wasmtime worker (docs/security.md, 'The kernel wall and threads').

A worker confines itself once it is prepared and then runs modules on the thread that serves.
What the wall keeps out is checked here from the inside: a module is handed a preopen of the
host's ``/`` that no configuration could give it, so only the kernel stands between it and
the host's files. It runs in a fresh interpreter that builds its gateway as a worker does
(``build_worker(..., confine=True)``): confining pytest's own thread would be for good.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.servers import PROBE, ROOT, write_config
from wagi.execution import landlock

pytestmark = pytest.mark.skipif(not landlock.availability().ok, reason="the kernel has no Landlock")

SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, os, sys
    from pathlib import Path
    from wagi.config import load_config
    from wagi.config import settings as wagi_settings
    from wagi.engines.base import Preopen
    from wagi.server.worker import build_worker

    settings = wagi_settings.load()
    tls_key = Path(sys.argv[1])
    worker = build_worker(
        settings, load_config(settings.config), confine=True, secrets=[tls_key]
    )
    assert worker.sites.confined_here is not None, "the worker did not confine itself"

    def run(route, *operations, host_root=True):
        match = worker.table.match(route, None)
        handler = match.handler
        module = worker.loader.get(handler.entry.module)
        invocation = handler.invocation([route, "hdr", *operations], {}, b"")
        if host_root:  # what no modules.toml can give: the host's / with no WASI confinement
            preopens = (*invocation.preopens, Preopen("/host", Path("/")))
            invocation = dataclasses.replace(invocation, preopens=preopens)
        result = worker.engine.run(module, invocation)
        return result.stdout.decode(errors="replace").split("\\n\\n", 1)[-1]

    paths = json.loads(sys.argv[2])
    answers = {
        name: run("/a", f"readfile=/host{path}") for name, path in paths["read"].items()
    }
    answers["write the cache"] = run("/a", f"writefile=/host{paths['cache']}/planted:x")
    answers["own volume"] = run("/a", f"readfile=/host{paths['own']}")
    answers["other route's volume, as configured"] = run(
        "/a", "readfile=/b/f.txt", host_root=False
    )
    print(json.dumps(answers))
    """
)


def test_a_module_with_the_hosts_root_reaches_nothing_the_worker_wall_refuses(
    tmp_path: Path,
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text(f"volume {name}\n")
    config = write_config(
        tmp_path,
        f"""
        [[module]]
        route = "/a"
        module = "{PROBE}"
        volumes = {{{{ "/a" = "{tmp_path / "a"}" }}}}

        [[module]]
        route = "/b"
        module = "{PROBE}"
        volumes = {{{{ "/b" = "{tmp_path / "b"}" }}}}
        """,
    )
    env_file = tmp_path / "secret.env"
    env_file.write_text("TOKEN=secret-in-env-file\n")
    tls_key = tmp_path / "tls" / "key.pem"
    tls_key.parent.mkdir()
    tls_key.write_text("secret TLS key\n")
    cache = tmp_path / "cache"
    environment = {
        "WAGI_CONFIG": str(config),
        "WAGI_ENV_FILE": str(env_file),
        "WAGI_CACHE_DIR": str(cache),
        "WAGI_ENGINE": "wasmtime",
        "PATH": "/usr/bin:/bin",
    }
    # Fill the cache first (as `wagi check` does before workers start).
    subprocess.run(
        [sys.executable, "-m", "wagi", "check", "--quiet"],
        env=environment,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    [artifact] = [p for p in cache.rglob("*.bin")]
    paths = {
        "read": {
            "modules.toml": str(config),
            "env file": str(env_file),
            "TLS key": str(tls_key),
            "cache": str(artifact),
            "/etc/passwd": "/etc/passwd",
        },
        "cache": str(cache),
        "own": str(tmp_path / "a" / "f.txt"),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tls_key), json.dumps(paths)],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("modules.toml", "env file", "TLS key", "cache", "/etc/passwd"):
        assert answers[name].startswith("ERR EACCES"), (name, answers[name])
    assert answers["write the cache"].startswith("ERR EACCES"), answers["write the cache"]
    assert not list(cache.rglob("planted"))
    # The wall grants the volumes (so the probe is not refused for another reason) ...
    assert answers["own volume"] == "volume a\n"
    # ... and keeping a route out of another's volume is WASI's job, which it does.
    assert answers["other route's volume, as configured"].startswith("ERR ENOTCAPABLE")
