"""Real gunicorn servers running real modules on real engines, and the paths tests share.

The pytest fixtures built on these (``engine``, ``server_factory``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from wagi.config import load_config
from wagi.engines import importable

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "tests" / "modules"
SAMPLES = ROOT / "samples"
PROBE = MODULES / "probe.wasm"

ENGINES = [name for name in ("wasmer", "wasmtime") if importable(name)[0]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ``gunicorn wagi.wsgi:app``."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, timeout=30, allow_redirects=False, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, data: bytes, **kwargs: object) -> requests.Response:
        return requests.post(
            self.url + path, data=data, timeout=30, allow_redirects=False, **kwargs
        )  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def raw(self, request: bytes) -> bytes:
        """Send raw bytes, return everything the server answers (the connection is closed)."""
        host, port = self.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(request)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15
) -> None:
    """Stop ``process`` with ``sig``, gracefully; kill it if it is still there after ``timeout``."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_healthy(
    process: subprocess.Popen[bytes], url: str, log_path: Path, *, verify: bool | str = True
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(url + "/healthz", timeout=2, verify=verify).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()}")


def start_gunicorn(
    tmp: Path,
    config: Path,
    engine: str,
    *,
    extra_env: dict[str, str] | None = None,
    gunicorn_args: tuple[str, ...] = (),
    workers: int = 2,
    bind: str | None = None,
    wait: bool = True,
    wrapper: tuple[str, ...] = (),
) -> Server:
    """A gunicorn serving ``config``; ``wrapper`` prefixes the command (``prlimit --as=N``)."""
    port = free_port()
    bind = bind or f"127.0.0.1:{port}"
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"gunicorn-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAGI_")} | {
        "WAGI_CONFIG": str(config),
        "WAGI_ENGINE": engine,
        "WAGI_CACHE_DIR": str(tmp / "cache"),
        **(extra_env or {}),
    }
    command = [
        *wrapper,
        sys.executable,
        "-m",
        "gunicorn",
        "wagi.wsgi:app",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "--bind",
        bind,
        "--workers",
        str(workers),
        *gunicorn_args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path, env)
    if wait:
        try:
            wait_until_healthy(process, server.url, log_path)
        except Exception:
            server.stop()
            raise
    return server


def refused_start(tmp_path: Path, config: Path, engine: str, *args: str) -> str:
    """Start gunicorn (with ``args``) on what it must refuse; its log, once it has exited."""
    server = start_gunicorn(tmp_path, config, engine, gunicorn_args=args, wait=False)
    try:
        assert server.process.wait(timeout=60) != 0
    finally:
        server.stop()  # a server that did start must not outlive the test
    log = server.log()
    assert "Booting worker" not in log
    return log


def wagi(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """``python -m wagi ARGS`` from the repository root, without the caller's ``WAGI_*``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WAGI_")}
    return subprocess.run(
        [sys.executable, "-m", "wagi", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def write_config(directory: Path, body: str) -> Path:
    """Write a modules.toml; ``{probe}``, ``{modules}`` and ``{samples}`` are expanded."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "modules.toml"
    path.write_text(textwrap.dedent(body).format(probe=PROBE, modules=MODULES, samples=SAMPLES))
    return path


def samples_without_volumes(directory: Path) -> Path:
    """A copy of ``samples/modules.toml`` without the routes that map volumes (the guestbook).

    Every engine can serve it, wasmer included (which refuses volumes), so tests that compare
    the engines on the samples use it. Module paths become absolute.
    """
    lines = []
    for entry in load_config(SAMPLES / "modules.toml").modules:
        if entry.volumes:
            continue
        assert entry.timeout is None and entry.max_memory is None, "copy these keys too"
        argv = entry.argv.items[0] if entry.argv.split else list(entry.argv.items)
        lines += [
            "[[module]]",
            f"route = {json.dumps(entry.route)}",
            f"module = {json.dumps(str(entry.module.path))}",
            f"entrypoint = {json.dumps(entry.entrypoint)}",
            f"argv = {json.dumps(argv)}",
        ]
        lines += [f"environment.{name} = {json.dumps(value)}" for name, value in entry.environment]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "modules.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def split_response(raw: bytes) -> tuple[bytes, bytes]:
    """An HTTP response read off a socket as ``(head, body)``, a chunked body decoded.

    A module that runs past wagi's 5 ms hold streams its body (chunked), one that ends
    sooner is sent whole: tests that read raw bytes must take either. A cut chunked body
    (no final zero chunk) fails.
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"\r\ntransfer-encoding: chunked" not in head.lower():
        return head, body
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n", "the chunked body did not end cleanly"
            return head, out
        out, body = out + body[:size], body[size + 2 :]


def env_lines(text: str) -> dict[str, str]:
    """``NAME=value`` lines (the probe's ``env`` output) as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
