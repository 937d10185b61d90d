#!/usr/bin/env python3
"""wagi against a plain WSGI app and classic CGI, measured side by side in one run.

Usage (from the repository root; ``--quick`` for a short trial)::

    .venv-3.11/bin/python bench/compare.py [--quick] [--out docs/bench]

One command does everything, from a fresh clone:

1. installs what is missing: the Debian packages wrk, nginx-light, fcgiwrap and
   gcc (``apt-get``, as root; never when ``CI`` is set), and the Python packages
   each interpreter needs (wagi's requirements and the ``bench`` extra of
   ``setup.cfg``, with that interpreter's pip);
2. starts every contender on 127.0.0.1, all at once (idle servers cost nothing),
   with the same number of workers:

   - **plain WSGI**: ``bench/plain_wsgi.py`` under gunicorn;
   - **wagi wasmtime**: ``samples/hello.wat`` under the same gunicorn command and
     settings (``bench/gunicorn.conf.py``), on ``--python`` (CPython 3.11 say);
   - **wagi wasmtime, wall off**: the same with ``--kernel-wall off``: what the
     kernel wall (Landlock) around the threads that run modules costs;
   - **wagi wasmer**: the same, on ``--wasmer-python`` (CPython 3.10, where
     wasmer imports);
   - **classic CGI**: ``bench/cgi/hello.c`` built with ``cc -O2`` now, behind
     nginx + fcgiwrap (fork and exec per request), as many fcgiwrap children and
     nginx workers as gunicorn workers;
   - with ``--extra``, wagi's ``/env/x?a=1`` (C, prints its environment) and a 16 KiB
     ``POST /echo`` on each engine;

3. checks every contender's answer once (status, Content-Type, exact body),
   then loads each with wrk at each ``--concurrency``, for ``--seconds``,
   interleaving the contenders (``--rounds`` repeats; the median round counts);
4. loads ``/hello`` ``--soak`` more times on each wagi server, reading every
   worker's RSS every ``--soak-every`` requests;
5. stops the servers, then runs ``bench/engine_overhead.py`` in each engine's
   Python (engine run, per-write cost, the in-process WSGI call, a pyinstrument
   profile) and ``bench/routing_cost.py`` here;
6. prints one report and writes ``results.json``, ``report.txt``,
   ``throughput.png`` and the profiles into ``--out``.

Only 127.0.0.1 is contacted. Every server is stopped at the end, even after an
error, Ctrl-C or SIGTERM. The exit status is 1 if any request failed, a worker
was replaced or a check did not pass.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import artifacts  # noqa: E402
import routing_cost  # noqa: E402
from run import (  # noqa: E402
    ECHO,
    ENV,
    HELLO,
    HOST,
    LoadResult,
    Scenario,
    Server,
    check_once,
    children_map,
    descendants,
    free_port,
    memory_kib,
    sigterm_raises,
    tree_cpu_seconds,
    wrk_load,
)

DEBIAN_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "fcgiwrap": "fcgiwrap", "cc": "gcc"}
"""Program -> the Debian package that provides it."""

# Issue 14: wagi's request path.
TARGET_VS_WSGI = 0.8
TARGET_VS_CGI = 3.0
TARGET_ENGINE_US = 30.0
TARGET_WSGI_US = 60.0
TARGET_STREAM_RSS_MIB = 64.0
"""The bench's reading of "bounded": a worker's peak RSS growth over a 1 GiB response."""
# Issue 16: components.
TARGET_COMPONENT_MS = 1.0
TARGET_PY_VS_CGI = 20.0
TARGET_PY_VS_SERVE = 1.0

PY_BODY = b'{"hello": "world", "method": "GET", "bytes": 0}\n'
"""What bench/cgi/hello.py answers to GET, in each of its three forms."""
PY = Scenario(
    "GET /py (Python)",
    "GET",
    "/py",
    expect=lambda data: data == PY_BODY,
    content_type="application/json",
)
PY_CLOSE = Scenario(
    PY.label,
    "GET",
    "/py",
    headers={"Connection": "close"},
    expect=PY.expect,
    content_type=PY.content_type,
)
"""PY for a server that keeps connections alive: a TCP connect per request, as everywhere else."""
CGI_BASELINE = {HELLO.label: "cgi", PY.label: "python-cgi"}
"""Scenario -> the classic-CGI server its "vs CGI" column divides by (same program, forked)."""
STREAM_BYTES = 1 << 30


# --------------------------------------------------------------------------- setup


def find_program(name: str) -> str | None:
    """``name`` on PATH, or in /usr/sbin (nginx and fcgiwrap live there, off a user's PATH)."""
    found = shutil.which(name)
    if found is None and Path("/usr/sbin", name).exists():
        found = f"/usr/sbin/{name}"
    return found


def ensure_debian_packages(install: bool) -> None:
    missing = sorted({pkg for prog, pkg in DEBIAN_PACKAGES.items() if find_program(prog) is None})
    if not missing:
        return
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if not install or os.environ.get("CI") or os.geteuid() != 0:
        why = "--no-install" if not install else "CI" if os.environ.get("CI") else "not root"
        raise SystemExit(
            f"missing Debian packages ({why}): run 'sudo apt-get install "
            f"--no-install-recommends {' '.join(missing)}' and try again"
        )
    print(f"installing {' '.join(missing)} (Debian packages)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def requirements(*sections: str) -> list[str]:
    """Requirement lines of ``setup.cfg``: ``install_requires`` and the named extras."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser.get("options", "install_requires").splitlines()
    for section in sections:
        lines += parser.get("options.extras_require", section).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


_MISSING = """
import importlib.metadata as md, json, sys
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
missing = []
for line in json.loads(sys.argv[1]):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(line)
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(line)
print(json.dumps(missing))
"""


def ensure_python_packages(python: str, wanted: list[str], install: bool) -> None:
    """Install into ``python``'s environment the requirements it does not satisfy."""
    probe = subprocess.run(
        [python, "-c", _MISSING, json.dumps(wanted)], capture_output=True, text=True, check=True
    )
    missing = json.loads(probe.stdout)
    if not missing:
        return
    command = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *missing]
    if not install:
        raise SystemExit(f"{python} lacks {missing}: run {' '.join(command)}")
    print(f"installing {', '.join(missing)} into {python}", flush=True)
    subprocess.run(command, check=True)


_PROBE = """
import importlib.metadata as md, json, platform, sys
sys.path.insert(0, sys.argv[1])
from wagi.engines import ENGINE_NAMES, importable
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
print(json.dumps({
    "python": platform.python_implementation() + " " + platform.python_version(),
    "engines": [n for n in ENGINE_NAMES if importable(n)[0]],
    "versions": {n: version(n) for n in ("wasmtime", "wasmer", "gunicorn", "werkzeug")},
}))
"""


def probe_python(python: str) -> dict[str, Any]:
    """The interpreter's version, the engines that import there and the package versions."""
    result = subprocess.run(
        [python, "-c", _PROBE, str(ROOT)], capture_output=True, text=True, check=True
    )
    info: dict[str, Any] = json.loads(result.stdout)
    info["path"] = python
    return info


def default_wasmer_python(main_python: str) -> str | None:
    venv = ROOT / ".venv-3.10" / "bin" / "python"
    if venv.exists():
        return str(venv)
    return main_python


def first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine_info(pythons: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cpu_model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    distro = "?"
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    fcgiwrap_help = subprocess.run(
        [find_program("fcgiwrap") or "fcgiwrap", "-h"], capture_output=True, text=True
    )
    fcgiwrap = next(
        (line for line in fcgiwrap_help.stdout.splitlines() if "version" in line), "fcgiwrap"
    )
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "os": distro,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "pythons": pythons,
        "tools": {
            "wrk": first_line(["wrk", "-v"]),
            "nginx": first_line([find_program("nginx") or "nginx", "-v"]),
            "fcgiwrap": fcgiwrap.strip(),
            "cc": first_line(["cc", "--version"]),
        },
    }


# --------------------------------------------------------------------------- servers


class Contender(Protocol):
    """What the benchmark needs of a running server."""

    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def roots(self) -> list[int]: ...
    def log_tail(self, lines: int = 40) -> str: ...


class GunicornServer(Server):
    """:class:`run.Server` with the interface :class:`Contender` asks for."""

    def roots(self) -> list[int]:
        return [self.pid]


class CgiServer:
    """nginx + fcgiwrap on 127.0.0.1: a native CGI program, forked and executed per request.

    ``workers`` is both the number of fcgiwrap children (each serves one request
    at a time, as a sync gunicorn worker does) and of nginx worker processes.
    nginx closes the connection after every response (``keepalive_timeout 0``),
    as gunicorn's sync workers do, so every contender pays a TCP connect per
    request and the comparison is between the ways of running the program.
    """

    def __init__(
        self,
        workers: int,
        tmp: Path,
        program: Path,
        *,
        access_log: bool,
        name: str = "cgi",
        path: str = "/hello",
    ) -> None:
        """``program``: what fcgiwrap executes for every request (any path); ``path``: its check."""
        self.workers = workers
        self.tmp = tmp / name
        self.tmp.mkdir()
        self.path = path
        self.port = free_port()
        self.program = program
        self.access_log = access_log
        self.socket = self.tmp / "fcgiwrap.sock"
        self.log_path = self.tmp / "server.log"
        self.nginx: subprocess.Popen[bytes] | None = None
        self.fcgiwrap: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        # As root, nginx's workers would run as nobody and could not reach the socket.
        user = "user root;" if os.geteuid() == 0 else ""
        access_log = f"{self.tmp}/access.log" if self.access_log else "off"
        # The variables of Debian's /etc/nginx/fastcgi_params, written out here.
        params = {
            "QUERY_STRING": "$query_string",
            "REQUEST_METHOD": "$request_method",
            "CONTENT_TYPE": "$content_type",
            "CONTENT_LENGTH": "$content_length",
            "SCRIPT_NAME": "$fastcgi_script_name",
            "REQUEST_URI": "$request_uri",
            "DOCUMENT_URI": "$document_uri",
            "DOCUMENT_ROOT": "$document_root",
            "SERVER_PROTOCOL": "$server_protocol",
            "REQUEST_SCHEME": "$scheme",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": "nginx/$nginx_version",
            "REMOTE_ADDR": "$remote_addr",
            "REMOTE_PORT": "$remote_port",
            "SERVER_ADDR": "$server_addr",
            "SERVER_PORT": "$server_port",
            "SERVER_NAME": "$server_name",
            "SCRIPT_FILENAME": str(self.program),
        }
        fastcgi = "\n".join(f"            fastcgi_param {k} {v};" for k, v in params.items())
        return textwrap.dedent(f"""\
            {user}
            worker_processes {self.workers};
            daemon off;
            pid {self.tmp}/nginx.pid;
            error_log {self.tmp}/error.log;
            events {{ worker_connections 1024; }}
            http {{
                access_log {access_log};
                keepalive_timeout 0;
                client_body_temp_path {self.tmp}/body;
                proxy_temp_path {self.tmp}/proxy;
                fastcgi_temp_path {self.tmp}/fastcgi;
                uwsgi_temp_path {self.tmp}/uwsgi;
                scgi_temp_path {self.tmp}/scgi;
                server {{
                    listen {HOST}:{self.port};
                    location / {{
                        fastcgi_pass unix:{self.socket};
            {{fastcgi}}
                    }}
                }}
            }}
            """).replace("{fastcgi}", fastcgi)

    def start(self) -> None:
        deadline = time.monotonic() + 30
        with open(self.log_path, "ab") as log:
            # Its own session: stop() ends fcgiwrap and the children it forked, and nothing else.
            self.fcgiwrap = subprocess.Popen(
                [
                    find_program("fcgiwrap") or "fcgiwrap",
                    "-c",
                    str(self.workers),
                    "-s",
                    f"unix:{self.socket}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            while not self.socket.exists():
                if self.fcgiwrap.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fcgiwrap did not start:\n{self.log_tail()}")
                time.sleep(0.02)
            conf = self.tmp / "nginx.conf"
            conf.write_text(self.config())
            self.nginx = subprocess.Popen(
                [find_program("nginx") or "nginx", "-c", str(conf), "-p", str(self.tmp)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while not self.healthy():
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx + fcgiwrap did not answer:\n{self.log_tail()}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", self.path)
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def roots(self) -> list[int]:
        return [p.pid for p in (self.nginx, self.fcgiwrap) if p is not None]

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for path in (self.log_path, self.tmp / "error.log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        if self.fcgiwrap is not None and self.fcgiwrap.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.fcgiwrap.pid, signal.SIGTERM)
            try:
                self.fcgiwrap.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.fcgiwrap.pid, signal.SIGKILL)
                self.fcgiwrap.wait()


def build_cgi(tmp: Path) -> Path:
    program = tmp / "hello.cgi"
    subprocess.run(
        [find_program("cc") or "cc", "-O2", "-o", str(program), str(BENCH / "cgi" / "hello.c")],
        check=True,
    )
    return program


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def wasmtime_cgi_program(tmp: Path, python: str) -> Path:
    """hello run per request by the wasmtime CLI, precompiled: what fcgiwrap executes.

    ``samples/hello.wat`` prints a CGI response (its header block, a blank line,
    the body), so the CLI's stdout goes to fcgiwrap as it is. ``exec`` leaves one
    process per request (the shell's fork is fcgiwrap's own, as for any script).
    """
    wasmtime = artifacts.wasmtime_cli(python)
    cwasm = artifacts.precompiled(python, ROOT / "samples" / "hello.wat")
    return executable(
        tmp / "wasmtime-hello.cgi",
        f"#!/bin/sh\nexec '{wasmtime}' run --allow-precompiled '{cwasm}'\n",
    )


def python_cgi_program(tmp: Path, python3: str) -> Path:
    """``bench/cgi/hello.py`` with ``python3`` on its ``#!`` line: classic CGI in Python."""
    if not Path(python3).exists():
        raise artifacts.Unavailable(f"--cgi-python {python3} does not exist")
    source = (BENCH / "cgi" / "hello.py").read_text()
    return executable(tmp / "hello-py.cgi", f"#!{python3}\n{source}")


def component_config(tmp: Path, python: str) -> Path:
    """A modules.toml serving the two components: componentize-py's hello and the C sample.

    ``/env/...`` is ``samples/env.wasm`` made a component, with the environment
    ``bench/modules.toml`` gives the core module, so both answer the same bytes.
    """
    py = artifacts.py_command_component(python)
    c = artifacts.c_component(python)
    path = tmp / "components.toml"
    path.write_text(
        textwrap.dedent(f"""\
            # Written by bench/compare.py: components built at bench time (bench/artifacts.py).
            [[module]]
            route = "/py"
            module = "{py}"

            [[module]]
            route = "/env/..."
            module = "{c}"
            environment = {{ GREETING = "hello from modules.toml" }}
            """)
    )
    return path


class WasmtimeServe:
    """``wasmtime serve``: hello.py as a ``wasi:http/proxy`` component, precompiled.

    wasmtime's own HTTP server, an instance per request from its pooling
    allocator. It takes no worker count: its runtime uses every CPU. ``-S cli``
    gives the component the ``wasi:cli`` imports componentize-py's runtime makes.
    """

    def __init__(self, tmp: Path, python: str, *, path: str) -> None:
        self.port = free_port()
        self.path = path
        self.wasmtime = artifacts.wasmtime_cli(python)
        self.cwasm = artifacts.precompiled(python, artifacts.py_http_component(python))
        self.log_path = tmp / f"wasmtime-serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            str(self.wasmtime),
            "serve",
            "-S",
            "cli",
            "--allow-precompiled",
            "--addr",
            f"{HOST}:{self.port}",
            str(self.cwasm),
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wasmtime serve did not answer:\n{self.log_tail()}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", self.path)
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def roots(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --------------------------------------------------------------------------- measuring


@dataclass
class Entry:
    """One server and what is loaded on it."""

    key: str
    label: str
    server: Contender
    scenarios: list[tuple[str, Scenario]]
    """(row label, scenario): the first is the hello every contender answers."""
    gunicorn: bool
    engine: str | None = None
    optional: bool = False
    """Fails soft: if it does not start or answer, it is reported "not available"."""


@dataclass
class Point:
    contender: str
    server: str
    scenario: str
    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us_per_request: float
    rounds_rps: list[float] = field(default_factory=list)
    vs_wsgi: float | None = None
    vs_cgi: float | None = None
    first_error: str = ""
    access_log: str = "on"


def footprint(entry: Entry) -> dict[str, Any]:
    """Memory in KiB: the sum over every process of the server, and per gunicorn worker."""
    tree = children_map()
    pids: list[int] = []
    for root in entry.server.roots():
        pids += [root, *descendants(root, tree)]
    total: dict[str, int] = {}
    for pid in pids:
        for kind, value in memory_kib(pid).items():
            total[kind] = total.get(kind, 0) + value
    workers = {}
    if entry.gunicorn:
        workers = {pid: memory_kib(pid) for pid in sorted(tree.get(entry.server.roots()[0], []))}
    return {"processes": len(pids), "total": total, "workers": workers}


def mean_worker(snapshot: dict[str, Any], kind: str) -> float | None:
    values = [w[kind] for w in snapshot["workers"].values() if kind in w]
    return sum(values) / len(values) if values else None


def load(entry: Entry, scenario: Scenario, concurrency: int, seconds: float, tmp: Path) -> Any:
    cpu_start = sum(tree_cpu_seconds(root) for root in entry.server.roots())
    result: LoadResult = wrk_load(entry.server.port, scenario, concurrency, seconds, tmp)
    result.server_cpu_s = sum(tree_cpu_seconds(root) for root in entry.server.roots()) - cpu_start
    return result


def measure_points(
    entries: list[Entry],
    concurrencies: Sequence[int],
    seconds: float,
    rounds: int,
    tmp: Path,
    access_log: str = "on",
) -> list[Point]:
    """Every (contender, scenario) at every concurrency, interleaved; the median round counts."""
    results: dict[tuple[str, str, int], list[LoadResult]] = {}
    for concurrency in concurrencies:
        for round_number in range(rounds):
            for entry in entries:
                for row, scenario in entry.scenarios:
                    tag = f" (round {round_number + 1}/{rounds})" if rounds > 1 else ""
                    print(f"  c={concurrency:<3} {row:<28}{tag} ...", end="", flush=True)
                    result = load(entry, scenario, concurrency, seconds, tmp)
                    print(f" {result.rps:8.0f} req/s, {result.errors} errors")
                    results.setdefault((entry.key, row, concurrency), []).append(result)
    points = []
    for (key, row, concurrency), runs in results.items():
        chosen = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
        scenario = next(s for e in entries for r, s in e.scenarios if r == row)
        points.append(
            Point(
                contender=row,
                server=key,
                scenario=scenario.label,
                concurrency=concurrency,
                rps=chosen.rps,
                p50_ms=chosen.p50_ms,
                p90_ms=chosen.p90_ms,
                p99_ms=chosen.p99_ms,
                requests=sum(r.ok for r in runs),
                errors=sum(r.errors for r in runs),
                cpu_us_per_request=chosen.cpu_us_per_request,
                rounds_rps=[r.rps for r in runs],
                first_error=next((r.first_error for r in runs if r.first_error), ""),
                access_log=access_log,
            )
        )
    by = {(p.server, p.scenario, p.concurrency): p for p in points}
    for point in points:
        wsgi = by.get(("wsgi", HELLO.label, point.concurrency))
        baseline = CGI_BASELINE.get(point.scenario)
        cgi = by.get((baseline, point.scenario, point.concurrency)) if baseline else None
        if wsgi and wsgi.rps and point.scenario == HELLO.label:
            point.vs_wsgi = point.rps / wsgi.rps
        if cgi and cgi.rps:
            point.vs_cgi = point.rps / cgi.rps
    return points


def soak(
    entry: Entry, total: int, every: int, concurrency: int, rate: float, tmp: Path
) -> dict[str, Any]:
    """Load /hello about ``total`` times; every worker's memory about every ``every`` requests.

    wrk runs for a time, not a count: each chunk lasts ``every`` divided by the
    rate of the chunk before (``rate`` req/s for the first), and the curve uses
    the counts wrk reports.
    """
    server = entry.server
    assert isinstance(server, GunicornServer)
    samples = [{"requests": 0, "workers": worker_state(server)}]
    done = errors = 0
    started = time.monotonic()
    while done < total:
        seconds = max(1.0, min(every, total - done) / max(rate, 1.0))
        result = wrk_load(server.port, HELLO, concurrency, seconds, tmp)
        done += result.ok
        errors += result.errors
        rate = result.rps or rate
        samples.append({"requests": done, "workers": worker_state(server)})
        print(
            f"    {done:>7} requests: mean worker RSS {mean_rss(samples[-1]):.1f} MiB, "
            f"threads {threads_text(samples[-1])}",
            flush=True,
        )
        if result.ok == 0:
            break
    return {
        "requests": done,
        "errors": errors,
        "seconds": time.monotonic() - started,
        "concurrency": concurrency,
        "samples": samples,
    }


def status_kib(pid: int, field_name: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def stream_once(server: GunicornServer) -> dict[str, Any]:
    """``GET /stream`` (1 GiB of zero bytes) from the one worker: MB/s and its RSS growth.

    A thread reads the worker's RSS every 10 ms while the body arrives; the
    growth is the highest reading minus the reading before the request. Every
    byte is checked (exact length, all zeros).
    """
    (worker,) = server.worker_pids()
    before = status_kib(worker, "VmRSS")
    hwm_before = status_kib(worker, "VmHWM")
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], status_kib(worker, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    zeros = bytes(1 << 20)
    received = 0
    wrong = False
    conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
    sampler.start()
    started = time.perf_counter()
    try:
        conn.request("GET", "/stream")
        response = conn.getresponse()
        while chunk := response.read(1 << 20):
            received += len(chunk)
            wrong = wrong or chunk != zeros[: len(chunk)]
        status = response.status
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        conn.close()
    ok = status == 200 and received == STREAM_BYTES and not wrong
    return {
        "ok": ok,
        "status": status,
        "bytes": received,
        "seconds": elapsed,
        "mb_per_s": received / elapsed / 1e6 if elapsed else 0.0,
        "rss_before_kib": before,
        "rss_peak_growth_kib": peak[0] - before,
        "hwm_growth_kib": status_kib(worker, "VmHWM") - hwm_before,
    }


def stream_test(args: argparse.Namespace, python: str, tmp: Path) -> dict[str, Any]:
    """1 GiB streamed by wagi on wasmtime (``bench/stream.wat``) and by plain WSGI.

    One worker each, the access log as in the first HTTP pass, two requests each:
    the speed is the second's (the first's one-off costs behind it); the RSS growth
    is the larger of the two (the first, from a fresh worker, includes the one-off).
    """
    config = tmp / "stream.toml"
    config.write_text(f'[[module]]\nroute = "/stream"\nmodule = "{BENCH / "stream.wat"}"\n')
    access = args.access_modes[0] == "on"
    servers = {
        "wagi wasmtime": GunicornServer(
            "wasmtime",
            1,
            tmp,
            python=python,
            access_log=access,
            settings={
                "WAGI_CONFIG": str(config),
                "WAGI_MAX_RESPONSE": "2 GiB",
                # Below gunicorn's worker timeout (120 s), which wagi checks at start-up.
                "WAGI_TIMEOUT": "100",
            },
        ),
        "plain WSGI": GunicornServer(
            "auto", 1, tmp, app="plain_wsgi:stream_app", python=python, access_log=access
        ),
    }
    results: dict[str, Any] = {}
    for label, server in servers.items():
        print(f"1 GiB stream: {label}", flush=True)
        try:
            server.start()
            first = stream_once(server)
            results[label] = stream_once(server) | {
                "first_ok": first["ok"],
                "first_rss_peak_growth_kib": first["rss_peak_growth_kib"],
            }
        except Exception as exc:  # a wrong answer or a dead server: reported, not fatal
            lines = [line for line in server.log_tail(200).splitlines() if "ERROR" in line]
            why = lines[-1] if lines else f"{type(exc).__name__}: {exc}"
            results[label] = {"ok": False, "error": why[:300]}
        finally:
            server.stop()
        print(f"  {results[label]}", flush=True)
    return results


def worker_state(server: GunicornServer) -> dict[int, dict[str, int]]:
    """Each worker's memory (KiB) and its number of threads (runner threads included)."""
    state = {}
    for pid in server.worker_pids():
        figures = memory_kib(pid)
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    figures["threads"] = int(line.split()[1])
        state[pid] = figures
    return state


def threads_text(sample: dict[str, Any]) -> str:
    return "/".join(str(w.get("threads", "?")) for w in sample["workers"].values())


def mean_rss(sample: dict[str, Any]) -> float:
    workers = sample["workers"].values()
    return sum(w["rss"] for w in workers) / max(1, len(workers)) / 1024


def run_engine_micro(
    python: str, engine: str, runs: int, out: Path, tmp: Path, components: dict[str, Path]
) -> tuple[dict[str, Any] | None, str]:
    """``engine_overhead.py`` in ``python`` for ``engine``: its figures and its printout."""
    json_path = tmp / f"micro-{engine}.json"
    command = [
        python,
        str(BENCH / "engine_overhead.py"),
        "--engine",
        engine,
        "--runs",
        str(runs),
        "--json",
        str(json_path),
        "--profile",
        str(out),
    ]
    for kind, path in components.items():
        command += [f"--component-{kind}", str(path)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    printout = result.stdout + result.stderr
    if not json_path.exists():
        return None, printout
    figures: dict[str, Any] = json.loads(json_path.read_text())
    figures["status"] = result.returncode
    return figures, printout


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def http_table(points: list[Point], concurrencies: Sequence[int]) -> list[str]:
    header = (
        f"{'contender':<28} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'CPU µs/req':>10} {'vs WSGI':>7} {'vs CGI':>7}"
    )
    lines = [header, "-" * len(header)]
    for concurrency in concurrencies:
        for p in (p for p in points if p.concurrency == concurrency):
            lines.append(
                f"{p.contender:<28} {p.concurrency:>4} {p.rps:>8.0f} {fmt(p.p50_ms):>7} "
                f"{fmt(p.p99_ms):>7} {p.errors:>6} {fmt(p.cpu_us_per_request, 0):>10} "
                f"{fmt(p.vs_wsgi, 2, 'x'):>7} {fmt(p.vs_cgi, 2, 'x'):>7}"
            )
        lines.append("")
    return lines


@dataclass
class Target:
    issue: int
    target: str
    measured: str
    verdict: str
    """"met", "not met", "not available", "not measured" or "info" (no target: reported beside)."""


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def ratio_text(point: Point | None, other: Point | None) -> str:
    if point is None or other is None or not other.rps:
        return "-"
    return f"{point.rps / other.rps:.2f}x ({point.rps:,.0f} / {other.rps:,.0f} req/s)"


def micro_case(micro: dict[str, Any], engine: str, key: str) -> dict[str, Any] | None:
    figures = micro.get(engine)
    if not figures:
        return None
    return next((c for c in figures["cases"] if c["key"] == key), None)


def targets(
    points: list[Point],
    stream: dict[str, Any],
    micro: dict[str, Any],
    unavailable: dict[str, str],
) -> list[Target]:
    """Every target of issues 14 and 16 against this run's figures, each met or not."""
    rows: list[Target] = []
    by = {(p.server, p.scenario, p.concurrency, p.access_log): p for p in points}
    modes = list(dict.fromkeys(p.access_log for p in points)) or ["on"]
    concurrencies = sorted({p.concurrency for p in points})

    def get(server: str, scenario: Scenario, c: int, mode: str) -> Point | None:
        return by.get((server, scenario.label, c, mode))

    def why_missing(*keys: str) -> str:
        return next((unavailable[k][:160] for k in keys if k in unavailable), "")

    for mode in modes:
        for c in concurrencies:
            wagi = get("wagi-wasmtime", HELLO, c, mode)
            wasmer = get("wagi-wasmer", HELLO, c, mode)
            where = f"c={c}, access log {mode}"
            for other, name, goal in (
                ("wsgi", "plain WSGI", TARGET_VS_WSGI),
                ("cgi", "classic CGI (C)", TARGET_VS_CGI),
            ):
                base = get(other, HELLO, c, mode)
                measured = ratio_text(wagi, base)
                if wasmer is not None and base is not None:
                    measured += f"; wasmer beside: {ratio_text(wasmer, base)}"
                ok = wagi is not None and base is not None and base.rps > 0
                rows.append(
                    Target(
                        14,
                        f"wagi wasmtime GET /hello >= {goal:g}x {name}, {where}",
                        measured,
                        met(wagi.rps / base.rps >= goal) if ok else "not measured",  # type: ignore[union-attr]
                    )
                )
            cli = get("wasmtime-cgi", HELLO, c, mode)
            if cli is not None:
                rows.append(
                    Target(
                        14,
                        f"wasmtime CLI as CGI (before: 436-474 req/s), {where}",
                        f"{cli.rps:,.0f} req/s; wagi wasmtime is {ratio_text(wagi, cli)}",
                        "info",
                    )
                )
            nowall = get("wagi-wasmtime-nowall", HELLO, c, mode)
            if nowall is not None and wagi is not None:
                rows.append(
                    Target(
                        14,
                        f"kernel wall: wagi wasmtime with ÷ without, {where}",
                        ratio_text(wagi, nowall),
                        "info",
                    )
                )
    for key, label, goal in (
        ("wsgi_wagi_hello", "whole WSGI app call for GET /hello, as a worker", TARGET_WSGI_US),
        ("engine_hello_25", "engine.run of hello with 25 env vars", TARGET_ENGINE_US),
    ):
        case = micro_case(micro, "wasmtime", key)
        beside = micro_case(micro, "wasmer", key)
        measured = (
            f"p50 {fmt(case['p50_us'], 1)} µs (CPU {fmt(case['cpu_us'], 1)} µs)" if case else "-"
        )
        if key == "wsgi_wagi_hello":
            # The worker as gunicorn runs it (wall up, module on the serving thread), and
            # beside it the same with the wall off and wagi run's way (a runner thread).
            for other, what in (
                ("wsgi_wagi_hello_nowall", "wall off"),
                ("wsgi_wagi_hello_runner", "runner thread"),
            ):
                if other_case := micro_case(micro, "wasmtime", other):
                    measured += f"; {what}: p50 {fmt(other_case['p50_us'], 1)} µs"
        if beside:
            measured += f"; wasmer beside: p50 {fmt(beside['p50_us'], 1)} µs"
        verdict = met(case["p50_us"] <= goal) if case and case["p50_us"] else "not measured"
        rows.append(
            Target(14, f"in-process, wasmtime: {label} <= {goal:g} µs p50", measured, verdict)
        )
    wagi_stream, plain_stream = stream.get("wagi wasmtime"), stream.get("plain WSGI")
    if stream:

        def stream_text(result: dict[str, Any] | None, what: str) -> str:
            if not result:
                return "-"
            if not result.get("ok"):
                return f"failed: {result.get('error') or result.get('status')}"
            if what == "rate":
                return f"{result['mb_per_s']:,.0f} MB/s"
            return f"{stream_growth_kib(result) / 1024:+.1f} MiB"

        rows.append(
            Target(
                14,
                "1 GiB streamed body, MB/s, beside plain WSGI (256 KiB chunks)",
                f"wagi {stream_text(wagi_stream, 'rate')}, "
                f"plain WSGI {stream_text(plain_stream, 'rate')}",
                "info",
            )
        )
        ok = bool(wagi_stream and wagi_stream.get("ok"))
        rows.append(
            Target(
                14,
                f"1 GiB streamed body: worker peak RSS growth <= {TARGET_STREAM_RSS_MIB:g} MiB",
                f"wagi {stream_text(wagi_stream, 'rss')}, "
                f"plain WSGI {stream_text(plain_stream, 'rss')}",
                met(stream_growth_kib(wagi_stream) / 1024 <= TARGET_STREAM_RSS_MIB)  # type: ignore[arg-type]
                if ok
                else "not measured",
            )
        )
    components = (micro.get("wasmtime") or {}).get("components", {})
    if components or "wagi-component" in unavailable:
        py = components.get("py", {})
        if py.get("available"):
            case = py["timing"]
            rows.append(
                Target(
                    16,
                    f"componentize-py hello, engine run in-process <= {TARGET_COMPONENT_MS:g} ms",
                    f"p50 {case['p50_us'] / 1e3:.2f} ms (CPU {fmt(case['cpu_us'], 0)} µs)",
                    met(case["p50_us"] / 1e3 <= TARGET_COMPONENT_MS),
                )
            )
        else:
            reason = py.get("reason") or unavailable.get("wagi-component", "-")
            rows.append(
                Target(
                    16,
                    f"componentize-py hello, engine run in-process <= {TARGET_COMPONENT_MS:g} ms",
                    reason[:160],
                    "not available",
                )
            )
        c_comp, c_core = components.get("c", {}), micro_case(micro, "wasmtime", "env_core")
        if c_comp.get("available") and c_core:
            rows.append(
                Target(
                    16,
                    "C sample (env.c) in-process: component beside core module",
                    f"component p50 {fmt(c_comp['timing']['p50_us'], 0)} µs, "
                    f"core p50 {fmt(c_core['p50_us'], 0)} µs",
                    "info",
                )
            )
    for mode in modes:
        for c in concurrencies:
            where = f"c={c}, access log {mode}"
            comp = get("wagi-component", PY, c, mode)
            for other, name, goal, op in (
                ("python-cgi", "python3 CGI", TARGET_PY_VS_CGI, ">="),
                ("wasmtime-serve", "wasmtime serve", TARGET_PY_VS_SERVE, ">"),
            ):
                base = get(other, PY, c, mode)
                if comp is None and base is None:
                    continue
                target = f"wagi component Python /py {op} {goal:g}x {name}, {where}"
                if comp is None or base is None or not base.rps:
                    missing = why_missing("wagi-component" if comp is None else other)
                    rows.append(Target(16, target, missing or "-", "not available"))
                    continue
                ratio = comp.rps / base.rps
                ok = ratio >= goal if op == ">=" else ratio > goal
                rows.append(Target(16, target, ratio_text(comp, base), met(ok)))
            core = get("wagi-wasmtime", ENV, c, mode)
            c_comp_point = get("wagi-component", ENV, c, mode)
            if core is not None:
                rows.append(
                    Target(
                        16,
                        f"C sample GET /env: component beside core module, {where}",
                        ratio_text(c_comp_point, core)
                        if c_comp_point
                        else why_missing("wagi-component") or "-",
                        "info" if c_comp_point else "not available",
                    )
                )
    return rows


def stream_growth_kib(result: dict[str, Any]) -> int:
    """A worker's peak RSS growth over a 1 GiB response: the larger of its two requests."""
    return int(max(result["rss_peak_growth_kib"], result.get("first_rss_peak_growth_kib", 0)))


def target_table(rows: list[Target]) -> list[str]:
    width = max([len(r.target) for r in rows] + [6])
    header = f"{'issue':<5} {'target':<{width}}  {'verdict':<13}  measured"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"#{r.issue:<4} {r.target:<{width}}  {r.verdict:<13}  {r.measured}")
    return lines


def memory_lines(entries: list[Entry], memory: dict[str, dict[str, Any]]) -> list[str]:
    header = (
        f"{'server':<28} {'procs':>5} {'PSS idle':>9} {'PSS end':>9} "
        f"{'worker PSS idle':>15} {'worker PSS end':>14} {'worker RSS end':>14}"
    )
    lines = [
        "memory, MiB (whole server: every process; worker: mean gunicorn worker; idle: before "
        "any request; end: after every load)",
        header,
        "-" * len(header),
    ]
    for entry in entries:
        idle, end = memory[entry.key]["idle"], memory[entry.key]["end"]

        def mib(value: float | None) -> str:
            return fmt(None if value is None else value / 1024, 1)

        lines.append(
            f"{entry.label:<28} {end['processes']:>5} {mib(idle['total'].get('pss')):>9} "
            f"{mib(end['total'].get('pss')):>9} {mib(mean_worker(idle, 'pss')):>15} "
            f"{mib(mean_worker(end, 'pss')):>14} {mib(mean_worker(end, 'rss')):>14}"
        )
    return lines


def soak_lines(soaks: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for label, curve in soaks.items():
        samples = curve["samples"]
        points = "  ".join(f"{s['requests'] // 1000}k:{mean_rss(s):.1f}" for s in samples)
        lines.append(
            f"{label}: mean worker RSS (MiB) by requests served, {curve['requests']} requests "
            f"at c={curve['concurrency']}, {curve['errors']} errors"
        )
        lines.append(f"  {points}")
        lines.append(
            f"  threads per worker: {threads_text(samples[0])} at start, "
            f"{threads_text(samples[-1])} at the end"
        )
        if len(samples) >= 3:
            # From the first sample after the soak started: one-off growth is behind it by then.
            first, last = samples[1], samples[-1]
            per_worker = (last["requests"] - first["requests"]) / max(1, len(last["workers"]))
            growth = (mean_rss(last) - mean_rss(first)) * 2**20
            lines.append(
                f"  RSS growth per worker after the first {first['requests']} requests: "
                f"{growth / 1024:+.0f} KiB over about {per_worker:.0f} requests each "
                f"({growth / max(1.0, per_worker):+.2f} B per request)"
            )
    return lines


def routing_lines(results: dict[str, dict[int, float]]) -> list[str]:
    return routing_cost.format_table(results).splitlines()


def plot(points: list[Point], soaks: dict[str, dict[str, Any]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed here (pip install -e '.[bench]')")
        return False
    points = [p for p in points if p.scenario == HELLO.label]  # the extras: table only
    contenders = list(dict.fromkeys(p.contender for p in points))
    concurrencies = sorted({p.concurrency for p in points})
    rps = {(p.contender, p.concurrency): p.rps for p in points}
    panels = 2 if soaks else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.8), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(contenders))
    colors: dict[str, Any] = {}
    for i, contender in enumerate(contenders):
        xs = [c + (i - (len(contenders) - 1) / 2) * width for c in range(len(concurrencies))]
        ys = [rps.get((contender, c), 0.0) for c in concurrencies]
        bars = ax.bar(xs, ys, width, label=contender)
        colors[contender] = bars.patches[0].get_facecolor() if bars.patches else None
        ax.bar_label(bars, fmt="%.0f", fontsize=7, rotation=90, padding=2)
    ax.set_xticks(
        range(len(concurrencies)), [f"{c} connection{'' if c == 1 else 's'}" for c in concurrencies]
    )
    ax.set_ylabel("requests per second (higher is better)")
    ax.set_title("GET /hello throughput, wrk on 127.0.0.1")
    ax.legend(fontsize=8)
    ax.margins(y=0.2)
    if soaks:
        ax = axes[0][1]
        highest = 0.0
        for label, curve in soaks.items():
            samples = curve["samples"]
            rss = [mean_rss(s) for s in samples]
            highest = max([highest, *rss])
            ax.plot(
                [s["requests"] for s in samples],
                rss,
                marker="o",
                label=label,
                color=colors.get(label),
            )
        ax.set_xlabel("requests served (GET /hello)")
        ax.set_ylabel("mean worker RSS, MiB")
        ax.set_title("worker memory under load")
        ax.set_ylim(0, highest * 1.2 or 1)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


QUICK = {
    "concurrency": "1,16",
    "seconds": 2.0,
    "soak": 20_000,
    "soak_every": 5_000,
    "micro_runs": 300,
    "routes": "1,100,1000",
    "access_log": "on",
}
DEFAULTS = {
    "concurrency": "1,16,64",
    "seconds": 5.0,
    "soak": 100_000,
    "soak_every": 10_000,
    "micro_runs": 2000,
    "routes": "1,100,10000",
    "access_log": "both",
}
CONTENDERS = (
    "wsgi",
    "wasmtime",
    "wasmtime-nowall",
    "wasmer",
    "cgi",
    "wasmtime-cgi",
    "python-cgi",
    "wagi-component",
    "wasmtime-serve",
)
PARTS = ("http", "soak", "stream", "micro", "routing")


def numbers(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"{what}: expected positive numbers, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        description="wagi against plain WSGI and classic CGI, measured in one run.",
        epilog="Defaults: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEFAULTS.items())
        + ". --quick: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()),
    )
    parser.add_argument("--quick", action="store_true", help="a short trial run")
    parser.add_argument("--workers", type=int, default=cpus, help=f"per server (default {cpus})")
    parser.add_argument("--concurrency", help="wrk connections, comma-separated")
    parser.add_argument("--seconds", type=float, help="wrk seconds per point")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every point; median counts")
    parser.add_argument("--soak", type=int, help="requests of the memory soak per wagi server")
    parser.add_argument("--soak-every", type=int, help="read worker memory every N requests")
    parser.add_argument("--soak-concurrency", type=int, default=16)
    parser.add_argument("--micro-runs", type=int, help="runs per in-process case")
    parser.add_argument("--routes", help="routing table sizes, comma-separated")
    parser.add_argument(
        "--access-log",
        choices=["on", "off", "both"],
        help="for every server alike; both: the HTTP pass twice, on then off",
    )
    parser.add_argument("--extra", action="store_true", help="also /env/x?a=1 and POST /echo")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"a subset of {','.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--skip", default="", help=f"parts to leave out, comma-separated: {','.join(PARTS)}"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="runs plain WSGI and wagi on wasmtime"
    )
    parser.add_argument(
        "--cgi-python",
        default="/usr/bin/python3",
        help="the python3 that runs bench/cgi/hello.py as classic CGI (default /usr/bin/python3)",
    )
    parser.add_argument(
        "--wasmer-python",
        help="runs wagi on wasmer (default: .venv-3.10/bin/python if it exists, else --python)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench", help="output dir")
    parser.add_argument("--no-install", action="store_true", help="install nothing; fail instead")
    args = parser.parse_args(argv)
    chosen = QUICK if args.quick else DEFAULTS
    for key, value in chosen.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.concurrency = numbers(args.concurrency, "--concurrency")
    args.routes = numbers(args.routes, "--routes")
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"--contenders: unknown {sorted(unknown)}; choose from {CONTENDERS}")
    if args.skip - set(PARTS):
        parser.error(f"--skip: choose from {', '.join(PARTS)}")
    args.access_modes = ["on", "off"] if args.access_log == "both" else [args.access_log]
    if min(args.workers, args.rounds, args.soak_every, args.micro_runs) < 1 or args.seconds <= 0:
        parser.error("--workers, --rounds, --soak-every, --micro-runs and --seconds must be > 0")
    if args.wasmer_python is None:
        args.wasmer_python = default_wasmer_python(args.python)
    return args


@contextlib.contextmanager
def running(entries: list[Entry], unavailable: dict[str, str]) -> Iterator[None]:
    """Start every server (all stay up: idle ones use no CPU); always stop them.

    An optional entry that does not start or answers wrongly is stopped, removed
    from ``entries`` and reported in ``unavailable``; any other failure stops the run.
    """
    started: list[Entry] = []
    try:
        for entry in list(entries):
            print(f"starting {entry.label} on {HOST}:{entry.server.port}", flush=True)
            started.append(entry)
            try:
                entry.server.start()
                for _, scenario in entry.scenarios:
                    check_once(entry.server.port, scenario)
            except Exception as exc:
                if not entry.optional:
                    raise
                reason = str(exc).strip().splitlines()
                logged = [line for line in entry.server.log_tail(200).splitlines() if line.strip()]
                why = next(
                    (line for line in logged if "rror" in line), logged[-1] if logged else ""
                )
                unavailable[entry.key] = f"{reason[0] if reason else exc}; log: {why}"[:400]
                print(f"  {entry.label}: not available: {unavailable[entry.key]}")
                entry.server.stop()
                entries.remove(entry)
        yield
    except BaseException:
        for entry in started:
            tail = entry.server.log_tail()
            if tail:
                print(f"\n{entry.label} log (last lines):\n{tail}", file=sys.stderr)
        raise
    finally:
        for entry in started:
            entry.server.stop()


def make_entries(
    args: argparse.Namespace,
    pythons: dict[str, dict[str, Any]],
    tmp: Path,
    access: bool,
    unavailable: dict[str, str],
) -> list[Entry]:
    """The servers of one HTTP pass; contenders whose tools cannot be had go to ``unavailable``."""
    entries = []
    main, wasmer = pythons["main"], pythons.get("wasmer")
    for name in args.contenders:
        try:
            entry = make_entry(name, args, main, wasmer, tmp, access)
        except artifacts.Unavailable as exc:
            unavailable[name] = str(exc)
            print(f"{name}: not available: {exc}")
            continue
        if entry is not None:
            entries.append(entry)
    return entries


def make_entry(
    name: str,
    args: argparse.Namespace,
    main: dict[str, Any],
    wasmer: dict[str, Any] | None,
    tmp: Path,
    access: bool,
) -> Entry | None:
    server: Contender
    if name == "wsgi":
        server = GunicornServer(
            "auto", args.workers, tmp, app="plain_wsgi:app", python=main["path"], access_log=access
        )
        return Entry("wsgi", "plain WSGI", server, [("plain WSGI", HELLO)], True)
    if name in ("wasmtime", "wasmtime-nowall", "wasmer"):
        # wasmtime-nowall: the same server with --kernel-wall off, to show what the wall costs.
        engine = name.removesuffix("-nowall")
        python = wasmer if engine == "wasmer" else main
        if python is None or engine not in python["engines"]:
            where = python["path"] if python else "no Python"
            print(f"skipping wagi {name}: it does not import in {where}")
            return None
        nowall = name.endswith("-nowall")
        server = GunicornServer(
            engine,
            args.workers,
            tmp,
            python=python["path"],
            access_log=access,
            settings={"WAGI_KERNEL_WALL": "off"} if nowall else None,
        )
        label = f"wagi {engine}, wall off" if nowall else f"wagi {engine}"
        scenarios = [(label, HELLO)]
        if args.extra or (name == "wasmtime" and "wagi-component" in args.contenders):
            # The C sample as a core module: the wagi-component contender runs it as a component.
            scenarios.append((f"{label} C core /env", ENV))
        if args.extra:
            scenarios.append((f"{label} POST /echo 16K", ECHO))
        return Entry(f"wagi-{name}", label, server, scenarios, True, engine)
    if name == "cgi":
        server = CgiServer(args.workers, tmp, build_cgi(tmp), access_log=access)
        return Entry("cgi", "classic CGI", server, [("classic CGI", HELLO)], False)
    if name == "wasmtime-cgi":
        program = wasmtime_cgi_program(tmp, main["path"])
        server = CgiServer(args.workers, tmp, program, access_log=access, name=name)
        label = "wasmtime CLI as CGI"
        return Entry(name, label, server, [(label, HELLO)], False)
    if name == "python-cgi":
        program = python_cgi_program(tmp, args.cgi_python)
        server = CgiServer(args.workers, tmp, program, access_log=access, name=name, path="/py")
        label = "python3 as CGI"
        return Entry(name, label, server, [(f"{label} /py", PY)], False)
    if name == "wagi-component":
        if "wasmtime" not in main["engines"]:
            raise artifacts.Unavailable(f"wasmtime does not import in {main['path']}")
        config = component_config(tmp, main["path"])
        server = GunicornServer(
            "wasmtime",
            args.workers,
            tmp,
            python=main["path"],
            access_log=access,
            # The artifact cache outlives the run: compiling the 18 MB Python component
            # takes a while, and the cache is keyed by what it compiled.
            settings={
                "WAGI_CONFIG": str(config),
                "WAGI_CACHE_DIR": str(artifacts.cache_dir() / "wagi-artifacts"),
            },
        )
        label = "wagi wasmtime component"
        scenarios = [(f"{label} /py", PY), (f"{label} C /env", ENV)]
        return Entry(name, label, server, scenarios, True, None, optional=True)
    if name == "wasmtime-serve":
        serve = WasmtimeServe(tmp, main["path"], path="/py")
        label = "wasmtime serve"
        return Entry(name, label, serve, [(f"{label} /py", PY_CLOSE)], False, optional=True)
    raise AssertionError(name)


def http_pass(
    args: argparse.Namespace,
    pythons: dict[str, dict[str, Any]],
    tmp: Path,
    access_log: str,
    results: dict[str, Any],
) -> int:
    """Start every contender with the access log ``access_log``, load them, stop them.

    Adds to ``results``: "points", "entries", "unavailable"; on the first pass also
    "memory" and "soaks". Returns an exit status.
    """
    status = 0
    first = not results["points"]
    unavailable: dict[str, str] = results["unavailable"]
    pass_tmp = tmp / f"access-{access_log}"
    pass_tmp.mkdir()
    entries = make_entries(args, pythons, pass_tmp, access_log == "on", unavailable)
    memory: dict[str, dict[str, Any]] = {}
    soaks: dict[str, dict[str, Any]] = {}
    with running(entries, unavailable):
        workers_before = {}
        for entry in entries:
            memory[entry.key] = {"idle": footprint(entry)}
            if entry.gunicorn:
                assert isinstance(entry.server, GunicornServer)
                workers_before[entry.key] = entry.server.worker_pids()
        print(f"access log {access_log}: every answer checked (status, Content-Type, exact body)")
        for entry in entries:
            for _, scenario in entry.scenarios:
                load(entry, scenario, max(args.concurrency), 1.0, pass_tmp)
        points = measure_points(
            entries, args.concurrency, args.seconds, args.rounds, pass_tmp, access_log
        )
        if first and "soak" not in args.skip and args.soak > 0:
            for entry in entries:
                if entry.engine is None:
                    continue
                print(f"memory soak: {entry.label}, {args.soak} x GET /hello")
                rate = max(
                    (p.rps for p in points if p.server == entry.key and p.scenario == HELLO.label),
                    default=100.0,
                )
                soaks[entry.label] = soak(
                    entry, args.soak, args.soak_every, args.soak_concurrency, rate, pass_tmp
                )
        for entry in entries:
            memory[entry.key]["end"] = footprint(entry)
            if entry.gunicorn:
                assert isinstance(entry.server, GunicornServer)
                if entry.server.worker_pids() != workers_before[entry.key]:
                    print(f"WARNING: {entry.label}: workers were replaced during the run")
                    print(entry.server.log_tail())
                    status = 1
    if any(p.errors for p in points) or any(s["errors"] for s in soaks.values()):
        status = 1
    results["points"] += points
    if first:
        results["entries"], results["memory"], results["soaks"] = entries, memory, soaks
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install = not args.no_install
    if "http" not in args.skip or "stream" not in args.skip:
        ensure_debian_packages(install)
    wanted_main = requirements("bench")
    ensure_python_packages(args.python, wanted_main, install)
    if sys.executable != args.python:
        ensure_python_packages(sys.executable, requirements("bench"), install)
    pythons = {"main": probe_python(args.python)}
    if "wasmer" in args.contenders and args.wasmer_python not in (None, "none"):
        if args.wasmer_python != args.python:
            ensure_python_packages(args.wasmer_python, requirements("bench"), install)
        pythons["wasmer"] = probe_python(args.wasmer_python)
    machine = machine_info(pythons)
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    http: dict[str, Any] = {
        "points": [],
        "entries": [],
        "unavailable": {},
        "memory": {},
        "soaks": {},
    }
    stream: dict[str, Any] = {}
    micro: dict[str, Any] = {}
    micro_printouts: list[str] = []
    routing: dict[str, dict[int, float]] = {}

    with sigterm_raises(), tempfile.TemporaryDirectory(prefix="wagi-compare-") as tmp_name:
        tmp = Path(tmp_name)
        if "http" not in args.skip:
            for access_log in args.access_modes:
                status |= http_pass(args, pythons, tmp, access_log, http)
        if "stream" not in args.skip:
            stream = stream_test(args, args.python, tmp)
            if not all(r.get("ok") and r.get("first_ok") for r in stream.values()):
                status = 1
        if "micro" not in args.skip:
            engines = [("wasmtime", args.python)]
            if "wasmer" in pythons and "wasmer" in pythons["wasmer"]["engines"]:
                engines.append(("wasmer", args.wasmer_python))
            components = component_paths(args, http["unavailable"])
            for engine, python in engines:
                print(f"in-process benchmark: {engine} ({python})", flush=True)
                figures, printout = run_engine_micro(
                    python,
                    engine,
                    args.micro_runs,
                    args.out,
                    tmp,
                    components if engine == "wasmtime" else {},
                )
                micro[engine] = figures
                micro_printouts.append(printout)
                if figures is None or figures["status"] != 0:
                    print(printout)
                    status = 1
        if "routing" not in args.skip:
            print("routing cost ...", flush=True)
            routing = routing_cost.measure(args.routes)

    machine["load_average_at_end"] = os.getloadavg()
    points: list[Point] = http["points"]
    report = build_report(args, machine, http, stream, micro, micro_printouts, routing)
    print("\n" + report)
    (args.out / "report.txt").write_text(report + "\n")
    title = (
        f"{machine['date']}, {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{args.workers} workers per server, {args.seconds:g} s per point"
    )
    first_mode = [p for p in points if p.access_log == args.access_modes[0]]
    wrote_plot = bool(points) and plot(
        first_mode, http["soaks"], args.out / "throughput.png", title
    )
    results = {
        "machine": machine,
        "settings": {
            k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
            for k, v in vars(args).items()
        },
        "http": [asdict(p) for p in points],
        "unavailable": http["unavailable"],
        "memory_kib": http["memory"],
        "soak": http["soaks"],
        "stream": stream,
        "inprocess": micro,
        "routing_us": routing,
        "targets": [asdict(t) for t in targets(points, stream, micro, http["unavailable"])],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    written = ["results.json", "report.txt"] + (["throughput.png"] if wrote_plot else [])
    print(f"\nwritten to {args.out}: {', '.join(written)} and the profiles")
    return status


def component_paths(args: argparse.Namespace, unavailable: dict[str, str]) -> dict[str, Path]:
    """The components engine_overhead.py times in-process (when wagi can load them)."""
    if "wagi-component" not in args.contenders:
        return {}
    try:
        return {
            "py": artifacts.py_command_component(args.python),
            "c": artifacts.c_component(args.python),
        }
    except artifacts.Unavailable as exc:
        unavailable.setdefault("wagi-component", str(exc))
        return {}


def build_report(
    args: argparse.Namespace,
    machine: dict[str, Any],
    http: dict[str, Any],
    stream: dict[str, Any],
    micro: dict[str, Any],
    micro_printouts: list[str],
    routing: dict[str, dict[int, float]],
) -> str:
    points: list[Point] = http["points"]
    lines = [
        f"== wagi compared, {machine['date']}, commit {machine['commit']}",
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, {machine['os']}",
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}"
        f", at end {', '.join(f'{x:.2f}' for x in machine['load_average_at_end'])} "
        "(above 0 before the run: another process competed for the CPUs)",
    ]
    for role, info in machine["pythons"].items():
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
        lines.append(f"python ({role}): {info['python']} at {info['path']}: {versions}")
    lines.append(", ".join(f"{k}: {v}" for k, v in machine["tools"].items()))
    rows = targets(points, stream, micro, http["unavailable"])
    lines += [
        "",
        "== targets (issues 14 and 16), this run; 'info' rows have no target: reported beside",
        *target_table(rows),
    ]
    for mode in args.access_modes:
        mode_points = [p for p in points if p.access_log == mode]
        if not mode_points:
            continue
        lines += [
            "",
            f"== HTTP, access log {mode} everywhere: wrk on {HOST}, {args.seconds:g} s per point, "
            f"{args.rounds} round(s), {args.workers} workers per server (sync gunicorn workers; "
            "fcgiwrap children; wasmtime serve: its own runtime on every CPU), "
            "a TCP connect per request everywhere (wrk asks wasmtime serve to close)",
            "vs WSGI: req/s over plain WSGI's (GET /hello). vs CGI: over the same program as "
            "classic CGI (/hello: C; /py: python3). CPU µs/req: every server process, wrk not "
            "counted",
            "",
        ]
        lines += http_table(mode_points, args.concurrency)
        for p in mode_points:
            if p.errors:
                lines.append(f"errors: {p.contender} c={p.concurrency}: {p.first_error}")
    for name, reason in http["unavailable"].items():
        lines.append(f"not available: {name}: {reason}")
    if stream:
        lines += ["", "== 1 GiB streamed body (one worker; figures of its second request)"]
        for label, result in stream.items():
            if result.get("ok"):
                lines.append(
                    f"{label:<14} {result['mb_per_s']:8,.0f} MB/s in {result['seconds']:.2f} s, "
                    f"worker RSS {result['rss_before_kib'] / 1024:.1f} MiB before, peak growth "
                    f"{result['rss_peak_growth_kib'] / 1024:+.1f} MiB (VmHWM "
                    f"{result['hwm_growth_kib'] / 1024:+.1f} MiB); first request, from a fresh "
                    f"worker: {result['first_rss_peak_growth_kib'] / 1024:+.1f} MiB"
                )
            else:
                lines.append(f"{label:<14} failed: {result.get('error') or result}")
    if http["memory"]:
        lines += ["", *memory_lines(http["entries"], http["memory"])]
    if http["soaks"]:
        lines += ["", *soak_lines(http["soaks"])]
    if micro_printouts:
        lines += ["", "== in-process (bench/engine_overhead.py, one run per engine)"]
        for printout in micro_printouts:
            lines += printout.strip().splitlines()
    if routing:
        lines += ["", "== routing (bench/routing_cost.py)", *routing_lines(routing)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
