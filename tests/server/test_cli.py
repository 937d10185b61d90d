"""The ``wagi`` command (serve, run, check) and start-up refusals, run as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from wagi.execution import landlock

from ..support.servers import (
    ENGINES,
    PROBE,
    ROOT,
    free_port,
    refused_start,
    samples_without_volumes,
    split_response,
    start_gunicorn,
    wagi,
    wait_until_healthy,
    write_config,
)


@pytest.mark.parametrize("command", ["serve", "run", "check"])
def test_help(command: str) -> None:
    result = wagi(command, "--help")
    assert result.returncode == 0
    out = result.stdout.decode()
    for flag in ("--config", "--env", "--engine", "--timeout", "--max-body", "WAGI_CONFIG"):
        assert flag in out


def test_check_prints_engine_and_routing_table(tmp_path: Path) -> None:
    result = wagi("check", "--config", "samples/modules.toml", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode().splitlines()
    assert "samples/modules.toml: 10 routes; engine " in out[0]
    table = [line for line in out[1:] if line.startswith("  /")]
    patterns = [line.split()[0] for line in table]
    assert patterns == [
        "/hello",
        "/echo",
        "/routes/hello",
        "/stats",
        "/guestbook",
        "/guestbook/static/...",
        "/routes/goodbye/...",
        "/request/...",
        "/routes/...",
        "/env/...",
    ]
    assert "routes.wasm  goodbye" in table[6]
    assert "guestbook.wasm  static" in table[5]


def test_check_reports_a_bad_config_precisely(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/x"\nmodule = "{probe}"\ncolour = 1\n')
    result = wagi("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.decode() == (
        f"wagi: error: {config}: [[module]] #1 (route '/x'), key 'colour': unknown key (known "
        "keys: allowed_hosts, argv, entrypoint, environment, host, http_max_concurrency, "
        "max_memory, module, repository, route, timeout, tmp, volumes)\n"
    )


def test_check_reports_a_missing_entrypoint(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, '[[module]]\nroute = "/x"\nmodule = "{probe}"\nentrypoint = "nope"\n'
    )
    result = wagi("check", "--config", str(config), "--engine", "wasmtime")
    assert result.returncode == 2
    assert "(route '/x'), key 'entrypoint': the module exports no function 'nope'" in (
        result.stderr.decode()
    )


def test_check_reports_an_invalid_module(tmp_path: Path) -> None:
    (tmp_path / "broken.wat").write_text("(module (func $f (result i32)))")
    config = write_config(tmp_path, '[[module]]\nroute = "/b"\nmodule = "broken.wat"\n')
    result = wagi("check", "--config", str(config), "--engine", "wasmtime")
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "(route '/b'), key 'module': cannot load" in err and "broken.wat" in err


def test_run_answers_one_request(tmp_path: Path) -> None:
    result = wagi(
        "run", "--config", "samples/modules.toml", "/hello", env={"WAGI_CACHE_DIR": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, world!\n"
    )


def test_run_sends_method_headers_and_body(tmp_path: Path) -> None:
    result = wagi(
        "run",
        "--config",
        "samples/modules.toml",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-file",
        "-",
        "/echo",
        stdin=b'{"a": 1}',
    )
    assert result.stdout == (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{"a": 1}'
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_run_gives_the_same_bytes_as_the_server(tmp_path: Path, engine: str) -> None:
    config = samples_without_volumes(tmp_path / "conf")
    # Both trust the same X-Request-Id, so X_REQUEST_ID is the same too.
    trusted = {"WAGI_TRUSTED_PROXY_HOPS": "1"}
    server = start_gunicorn(tmp_path, config, engine, workers=1, extra_env=trusted)
    try:
        for path in (
            "/hello",
            "/env/x/y?greet=matt&foo=bar",
            "/routes/goodbye/z",
            "/stats?n=1&n=2",
            "/request/x?a=b",
            "/nothing",
        ):
            raw = server.raw(
                f"GET {path} HTTP/1.1\r\nHost: localhost:3000\r\nX-Request-Id: t-1\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head, body = split_response(raw)
            status = head.split(b"\r\n")[0]
            ran = wagi(
                "run",
                "--config",
                str(config),
                "--engine",
                engine,
                "--trusted-proxy-hops",
                "1",
                "-H",
                "Host: localhost:3000",
                "-H",
                "X-Request-Id: t-1",
                path,
            )
            run_head, _, run_body = ran.stdout.partition(b"\r\n\r\n")
            assert run_head.split(b"\r\n")[0] == status
            # Only the server knows the client's port.
            body = b"\n".join(
                line for line in body.split(b"\n") if not line.startswith(b"REMOTE_PORT=")
            )
            assert run_body == body, path
    finally:
        server.stop()


def test_serve_runs_gunicorn_with_the_samples(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAGI_")}
    env["WAGI_CACHE_DIR"] = str(tmp_path / "cache")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wagi",
                "serve",
                "--config",
                "samples/modules.toml",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(process, url, log)
        assert requests.get(url + "/hello", timeout=10).text == "Hello, world!\n"
        text = log.read_text()
        assert "Booting worker" in text
        assert "engine " in text and "10 routes" in text
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/x"\nmodule = "missing.wasm"\n')
    result = wagi("serve", "--config", str(config), "--bind", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert b"key 'module': module file 'missing.wasm'" in result.stderr


def test_gunicorn_refuses_a_bad_module_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "bad.wat").write_text('(module (func (export "_start") (unknown)))')
    config = write_config(tmp_path, '[[module]]\nroute = "/bad"\nmodule = "bad.wat"\n')
    log = refused_start(tmp_path, config, "wasmtime")
    assert "wagi cannot start" in log
    assert "(route '/bad'), key 'module': cannot load" in log
    assert "Booting worker" not in log


def test_engine_refusals(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config = write_config(
        tmp_path,
        '[[module]]\nroute = "/v"\nmodule = "{probe}"\nvolumes = {{ "/data" = "data" }}\n',
    )
    result = wagi("check", "--config", str(config), "--engine", "wasmer")
    err = result.stderr.decode()
    if "wasmer" not in ENGINES:
        assert result.returncode == 2
        assert "engine 'wasmer' is not available: the wasmer package does not import here" in err
        return
    auto = wagi("check", "--quiet", "--config", str(config), "--cache-dir", str(tmp_path / "c"))
    assert auto.returncode == 0, auto.stderr
    if landlock.availability().ok:  # wasmer serves the volume behind the kernel wall
        assert result.returncode == 0, err
        assert "kernel wall for /v: Landlock ABI" in result.stdout.decode()
        assert "engine wasmer" in auto.stdout.decode()
    else:
        assert result.returncode == 2
        assert "engine 'wasmer' cannot honour this configuration" in err
        assert "(route '/v'), key 'volumes': wasmer does not confine a module to its volumes" in err
        assert "use the wasmtime engine" in err
        assert "engine wasmtime" in auto.stdout.decode()
        assert "auto: wasmer cannot honour this configuration" in auto.stdout.decode()
    memory = wagi(
        "check",
        "--quiet",
        "--config",
        str(samples_without_volumes(tmp_path / "samples")),
        "--engine",
        "wasmer",
        "--max-memory",
        "64 MiB",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert memory.returncode == 0, memory.stderr
    assert "memory limits enforced" in memory.stdout.decode()


def test_auto_prefers_wasmer_where_it_imports(tmp_path: Path) -> None:
    config = samples_without_volumes(tmp_path / "samples")
    result = wagi("check", "--quiet", "--config", str(config), "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    expected = "engine wasmer" if "wasmer" in ENGINES else "engine wasmtime"
    assert expected in result.stdout.decode()


def test_probe_is_a_real_module() -> None:
    assert PROBE.read_bytes()[:4] == b"\0asm"


ROUTES_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{text}")
  (func (export "_start"))
  (func (export "real"))
  (func (export "_routes")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {length}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


@pytest.mark.parametrize(
    ("listing", "error"),
    [
        ("/a real extra", "line 1: expected '<route> <export>', got '/a real extra'"),
        ("/ok real\\n/b missing", "line 2: the module has no exported function 'missing'"),
        ("/a/.../b real", "line 1: '...' may only end a route"),
    ],
)
def test_check_reports_bad_routes_output(tmp_path: Path, listing: str, error: str) -> None:
    length = len(listing.encode().decode("unicode_escape"))
    (tmp_path / "r.wat").write_text(ROUTES_WAT.format(text=listing, length=length))
    config = write_config(tmp_path, '[[module]]\nroute = "/r/..."\nmodule = "r.wat"\n')
    result = wagi("check", "--config", str(config), "--engine", "wasmtime")
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"r.wat: _routes of [[module]] #1 (route '/r/...'), {error}" in err


def test_check_lists_subroutes_of_a_wat_module(tmp_path: Path) -> None:
    listing = "/one real\\n\\n/two/... real\\n"
    length = len(listing.encode().decode("unicode_escape"))
    (tmp_path / "r.wat").write_text(ROUTES_WAT.format(text=listing, length=length))
    config = write_config(tmp_path, '[[module]]\nroute = "/r"\nmodule = "r.wat"\n')
    result = wagi(
        "check", "--config", str(config), "--engine", "wasmtime", "--cache-dir", str(tmp_path / "c")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()[1:]
    if landlock.availability().ok:  # _routes ran behind it, like every run
        wall = lines.pop(0)
        assert wall.startswith("  kernel wall for the worker: Landlock ABI ")
        assert "; no TCP bind or connect;" in wall
    assert [line.split() for line in lines] == [
        ["/r", "r.wat", "_start"],
        ["/r/one", "r.wat", "real"],
        ["/r/two/...", "r.wat", "real"],
    ]


def test_check_reports_a_bad_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "vars"
    env_file.write_text("GOOD=1\nthis is not a pair\n")
    result = wagi("check", "--config", "samples/modules.toml", "--env-file", str(env_file))
    assert result.returncode == 2
    assert f"{env_file}:2: expected NAME=value" in result.stderr.decode()


@pytest.mark.parametrize("engine", ENGINES)
def test_log_dir_gets_module_stderr_per_route(tmp_path: Path, engine: str) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/p/..."\nmodule = "{probe}"\n')
    logs = tmp_path / "logs"
    server = start_gunicorn(
        tmp_path, config, engine, workers=1, extra_env={"WAGI_LOG_DIR": str(logs)}
    )
    try:
        assert server.get("/p/x?hdr&err=first%20line&err=second&print=ok").text == "ok\n"
    finally:
        server.stop()
    lines = (logs / "p.stderr.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["[/p/...] first line", "[/p/...] second"]
    assert "first line" not in server.log()


@pytest.mark.skipif(len(ENGINES) < 2, reason="both engines import on the CPython 3.10 leg only")
def test_every_sample_gives_the_same_bytes_on_both_engines(tmp_path: Path) -> None:
    requests_to_send = [
        b"GET /hello HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /env/a%20b/c?x=1&&y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Type: image/x\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\n\x00\x01\x02\x03\x04",
        b"GET /routes/hello HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /routes/goodbye/moon HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /routes HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /stats?n=1&n=2.5&n=%2D4 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"POST /request/p?q=%C3%A9 HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\n<b>&</b>",
    ]
    answers: dict[str, list[bytes]] = {}
    for engine in ENGINES:
        config = samples_without_volumes(tmp_path / engine / "conf")
        # A trusted proxy's request id, the same on both (generated ones differ).
        trusted = {"WAGI_TRUSTED_PROXY_HOPS": "1"}
        server = start_gunicorn(tmp_path / engine, config, engine, workers=1, extra_env=trusted)
        try:
            answers[engine] = [
                strip_volatile(server.raw(r.replace(b"\r\n", b"\r\nX-Request-Id: r1\r\n", 1)))
                for r in requests_to_send
            ]
        finally:
            server.stop()
    assert answers["wasmer"] == answers["wasmtime"]
    assert all(b" 200 OK\r\n" in a for a in answers["wasmer"])


def strip_volatile(response: bytes) -> bytes:
    """Drop what differs between two servers whatever the engine: Date and the client port."""
    lines = response.split(b"\n")
    return b"\n".join(line for line in lines if not line.startswith((b"Date:", b"REMOTE_PORT=")))


@pytest.mark.parametrize("engine", ENGINES)
def test_run_stops_a_module_past_its_timeout(tmp_path: Path, engine: str) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    result = wagi(
        "run", "--config", str(config), "--engine", engine, "--timeout", "1", "/p?hdr&loop"
    )
    if engine == "wasmtime":
        assert result.returncode == 0
        assert result.stdout.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    else:  # wasmer cannot be interrupted: the command ends by SIGALRM instead of hanging
        assert result.returncode == -14


def test_start_up_refuses_a_module_timeout_above_the_worker_timeout(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\ntimeout = 200\n')
    log = refused_start(tmp_path, config, "wasmtime")
    assert "a module may run for 200s but gunicorn's worker timeout is 120s" in log
    assert "Booting worker" not in log


@pytest.mark.skipif("wasmer" not in ENGINES, reason="wasmer imports on the CPython 3.10 leg only")
def test_wasmer_refuses_a_read_only_volume_and_gunicorn_will_not_start(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    config = write_config(
        tmp_path,
        '[[module]]\nroute = "/ro"\nmodule = "{probe}"\n'
        'volumes = {{ "/ro" = {{ path = "ro", read_only = true }} }}\n',
    )
    log = refused_start(tmp_path, config, "wasmer")
    assert "engine 'wasmer' cannot honour this configuration" in log
    assert "(route '/ro'), key 'volumes': wasmer opens every file read-write" in log
    assert "Booting worker" not in log


def test_a_reload_with_a_broken_config_keeps_the_old_workers(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    server = start_gunicorn(
        tmp_path, config, "wasmtime", workers=1, gunicorn_args=("--graceful-timeout", "2")
    )
    try:
        assert server.get("/p?hdr&print=before").text == "before\n"
        config.write_text(config.read_text() + "colour = 1\n")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload refused" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "wagi: reload refused, the workers keep the previous configuration" in server.log()
        assert "key 'colour': unknown key" in server.log()
        for i in range(5):
            assert server.get(f"/p?hdr&print=after-{i}").text == f"after-{i}\n"
        # Once the file is fixed, a reload takes it.
        config.write_text(
            config.read_text().replace("colour = 1\n", "")
            + f'[[module]]\nroute = "/q"\nmodule = "{PROBE}"\n'
        )
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while server.get("/q?hdr&print=new").status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert server.get("/q?hdr&print=new").text == "new\n"
        assert server.process.poll() is None
    finally:
        server.stop()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_module_importing_what_nobody_provides_stops_start_up(
    tmp_path: Path, engine: str
) -> None:
    (tmp_path / "http.wat").write_text(
        '(module (import "wasi_experimental_http" "req" (func (param i32)))'
        ' (func (export "_start")))'
    )
    config = write_config(tmp_path, '[[module]]\nroute = "/h"\nmodule = "http.wat"\n')
    result = wagi("check", "--config", str(config), "--engine", engine)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "(route '/h'): " in err and "cannot be instantiated" in err
    assert "wasi_experimental_http" in err
