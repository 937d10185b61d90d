"""A fleet: several wagi instances behind one real nginx running deploy/fleet/wagi-fleet.conf.

Every instance is its own gunicorn master (a TCP port or a unix socket, its own modules.toml
and cache, as if on its own host). Under a load of keep-alive clients, one instance is killed
outright (master and workers, SIGKILL) and a new module version is rolled across the fleet
with deploy/fleet/roll.py; the clients must not see one failure. The figures (requests,
failures, requests per second) are printed: ``pytest -s tests/system/test_fleet.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..support.nginx import main_config, start_nginx
from ..support.servers import PROBE, ROOT, Server, env_lines, free_port, start_gunicorn
from ..support.wat import WatModule

SITE = ROOT / "deploy" / "fleet" / "wagi-fleet.conf"
ROLL = ROOT / "deploy" / "fleet" / "roll.py"
# The instances the shipped site names; the tests put their own in their place.
SITE_SERVERS = (
    "server 127.0.0.1:3001 max_fails=1 fail_timeout=5s;",
    "server 127.0.0.1:3002 max_fails=1 fail_timeout=5s;",
    "server unix:/run/wagi/3.sock max_fails=1 fail_timeout=5s;",
)
FAIL_TIMEOUT = 5.0
"""The site's fail_timeout: how long nginx leaves a failed instance out."""
LOAD_THREADS = 4
V1, V2 = b"version 1\n", b"version 2\n"


def render_site(port: int, addresses: Sequence[str], *, keepalive: bool = False) -> str:
    """The shipped fleet site with these instances and a loopback port; nothing else changed.

    ``addresses`` are gunicorn ``--bind`` values, each given the site's own server parameters.
    ``keepalive`` turns on upstream keep-alive, which the site leaves out on purpose, to show
    what it would do.
    """
    site = SITE.read_text()
    for line in SITE_SERVERS:
        assert site.count(line) == 1, f"{SITE} should hold {line!r} once"
    params = SITE_SERVERS[0].split(" ", 2)[2]
    ours = "\n    ".join(f"server {address} {params}" for address in addresses)
    start = site.index(SITE_SERVERS[0])
    end = site.index(SITE_SERVERS[-1]) + len(SITE_SERVERS[-1])
    site = site[:start] + ours + site[end:]
    assert site.count("listen 80;") == 1
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    if keepalive:
        site = site.replace("    least_conn;\n", "    least_conn;\n    keepalive 16;\n", 1)
        site = site.replace(
            "proxy_http_version 1.1;\n",
            'proxy_http_version 1.1;\n    proxy_set_header Connection "";\n',
            1,
        )
    return site


def http_request(
    address: str, path: str, method: str = "GET", timeout: float = 30
) -> tuple[int, bytes]:
    """One request straight to ``address`` (``HOST:PORT`` or ``unix:PATH``): status, body."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address.removeprefix("unix:"))
    else:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    with sock:
        sock.sendall(
            f"{method} {path} HTTP/1.0\r\nHost: fleet.test\r\nContent-Length: 0\r\n\r\n".encode()
        )
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, ...: a gunicorn master's workers and theirs."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@dataclass
class Instance:
    """One wagi instance: its gunicorn, address (``--bind``), pid file, modules.toml."""

    server: Server
    address: str
    pidfile: Path
    config: Path
    directory: Path

    def spec(self) -> list[str]:
        """This instance as roll.py's ``--instance ADDRESS PIDFILE CONFIG``."""
        return ["--instance", self.address, str(self.pidfile), str(self.config)]

    def processes(self) -> list[int]:
        return [self.server.process.pid, *descendants(self.server.process.pid)]

    def kill(self) -> list[int]:
        """SIGKILL the master and every process under it, all at once; the pids killed."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        self.server.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in pids):
            assert time.monotonic() < deadline, "killed processes still running"
            time.sleep(0.02)
        return pids


@dataclass
class Fleet:
    """Running instances, the module versions they can serve, and nginx in front."""

    instances: list[Instance]
    tmp: Path
    nginx_url: str = ""
    nginx_dir: Path | None = None

    def config_text(self, version: int) -> str:
        module = self.tmp / "modules" / f"v{version}.wat"
        return f'[[module]]\nroute = "/version"\nmodule = "{module}"\n'

    def nginx_errors(self) -> list[str]:
        assert self.nginx_dir is not None
        return (self.nginx_dir / "logs" / "error.log").read_text().splitlines()

    def through_nginx(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        host, port = self.nginx_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Host": "fleet.test"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        for instance in self.instances:
            instance.server.stop()


def wait_healthy(instance: Instance) -> None:
    deadline = time.monotonic() + 60
    while True:
        if instance.server.process.poll() is not None:
            raise RuntimeError(f"instance exited:\n{instance.server.log()[-3000:]}")
        try:
            if http_request(instance.address, "/healthz", timeout=2) == (200, b"OK"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"instance not healthy:\n{instance.server.log()[-3000:]}")
        time.sleep(0.1)


def start_fleet(
    tmp: Path,
    engine: str,
    count: int,
    *,
    unix_last: bool = True,
    extra: Callable[[Path], str] | None = None,
) -> Fleet:
    """``count`` instances serving ``/version`` (v1), one worker each, the last on a unix
    socket unless ``unix_last`` is false; ``extra(directory)`` adds routes to each."""
    modules = tmp / "modules"
    modules.mkdir(parents=True)
    for version in (1, 2):
        text = f"Content-Type: text/plain\n\nversion {version}\n"
        (modules / f"v{version}.wat").write_text(WatModule(pages=1).print(text).text())
    fleet = Fleet([], tmp)
    try:
        for number in range(1, count + 1):
            directory = tmp / f"instance-{number}"
            directory.mkdir()
            config = directory / "modules.toml"
            config.write_text(fleet.config_text(1) + (extra(directory) if extra else ""))
            unix = unix_last and number == count
            address = f"unix:{directory / 'wagi.sock'}" if unix else f"127.0.0.1:{free_port()}"
            pidfile = directory / "gunicorn.pid"
            server = start_gunicorn(
                directory,
                config,
                engine,
                bind=address,
                workers=1,
                wait=False,
                # The access log shows which instance answered (off by default: nginx logs).
                gunicorn_args=("--pid", str(pidfile), "--access-logfile", "-"),
                extra_env={"WAGI_TRUSTED_PROXY_HOPS": "1"},
            )
            fleet.instances.append(Instance(server, address, pidfile, config, directory))
        for instance in fleet.instances:
            wait_healthy(instance)
    except BaseException:
        fleet.stop()
        raise
    return fleet


@contextlib.contextmanager
def fleet_behind_nginx(
    tmp: Path,
    engine: str,
    count: int = 3,
    *,
    unix_last: bool = True,
    extra: Callable[[Path], str] | None = None,
    keepalive: bool = False,
) -> Iterator[Fleet]:
    fleet = start_fleet(tmp / "fleet", engine, count, unix_last=unix_last, extra=extra)
    try:
        addresses = [instance.address for instance in fleet.instances]
        port = free_port()
        conf = main_config(tmp / "nginx", render_site(port, addresses, keepalive=keepalive))
        fleet.nginx_dir = conf.parent
        fleet.nginx_url = f"http://127.0.0.1:{port}"
        nginx = start_nginx(conf, fleet.nginx_url + "/healthz")
        try:
            yield fleet
        finally:
            nginx.stop()
    finally:
        fleet.stop()


@dataclass
class Outcome:
    start: float
    end: float
    status: int  # 0: no HTTP answer at all
    body: bytes
    error: str = ""


@dataclass
class Load:
    """Clients, each on one keep-alive connection to nginx, asking for ``path`` until stopped.

    Every answer is kept; a failure is anything but a 200 whose body is one of the expected
    ones (an exception, a cut connection and a 5xx included).
    """

    url: str
    path: str
    threads: int = LOAD_THREADS
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    stopped: float = 0.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._client) for _ in range(self.threads)]

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._workers:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=120)
        self.stopped = time.monotonic()

    def _client(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        mine = []
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                conn.request("GET", self.path, headers={"Host": "fleet.test"})
                response = conn.getresponse()
                body = response.read()
                mine.append(Outcome(start, time.monotonic(), response.status, body))
            except (OSError, http.client.HTTPException) as e:
                mine.append(Outcome(start, time.monotonic(), 0, b"", repr(e)))
                conn.close()
        conn.close()
        with self._lock:
            self.outcomes.extend(mine)

    def failures(self, expected: set[bytes]) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200 or o.body not in expected]

    def figures(self, expected: set[bytes]) -> str:
        seconds = self.stopped - self.started
        latencies = sorted(o.end - o.start for o in self.outcomes)
        return (
            f"{len(self.outcomes)} requests, {len(self.failures(expected))} failed, "
            f"{len(self.outcomes) / seconds:.0f} req/s over {seconds:.1f} s "
            f"({self.threads} keep-alive clients); latency median "
            f"{latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
        )


def upstream_errors(fleet: Fleet, instance: Instance) -> list[str]:
    """nginx's error-log lines about requests it sent to ``instance``."""
    # nginx writes a unix socket as "http://unix:/path:/uri".
    return [
        line for line in fleet.nginx_errors() if f'upstream: "http://{instance.address}' in line
    ]


def test_an_instance_killed_under_load_costs_no_request(engine: str, tmp_path: Path) -> None:
    with fleet_behind_nginx(tmp_path, engine) as fleet:
        victim = fleet.instances[1]
        with Load(fleet.nginx_url, "/version") as load:
            time.sleep(2)
            killed = victim.kill()
            killed_at = time.monotonic()
            # Past fail_timeout, so nginx also tries the dead instance again, under load.
            time.sleep(FAIL_TIMEOUT + 1.5)
        errors = upstream_errors(fleet, victim)
        kinds = Counter(re.search(r"\*\d+ (.*?) while ", e).group(1) for e in errors)  # type: ignore[union-attr]
        print(f"\nkill one of 3 instances ({engine}): {load.figures({V1})}; nginx: {dict(kinds)}")
        assert load.failures({V1}) == []
        assert len(killed) >= 2  # the master and its worker
        after = [o for o in load.outcomes if o.start > killed_at]
        assert len(after) > 100
        # The victim took its share of the load until it died ...
        assert victim.server.log().count('"GET /version HTTP/1.1" 200') > 10
        # ... then nginx met the dead instance (at once, and again after fail_timeout), and
        # passed every one of those requests on; no other instance ever failed.
        assert len(errors) >= 2, fleet.nginx_errors()
        assert any("(111: Connection refused) while connecting to upstream" in e for e in errors)
        others = [e for i in fleet.instances if i is not victim for e in upstream_errors(fleet, i)]
        assert others == []


def test_a_rolling_reload_under_load_costs_no_request(engine: str, tmp_path: Path) -> None:
    with fleet_behind_nginx(tmp_path, engine) as fleet:
        new_config = tmp_path / "modules-v2.toml"
        new_config.write_text(fleet.config_text(2))
        specs = [arg for instance in fleet.instances for arg in instance.spec()]
        with Load(fleet.nginx_url, "/version") as load:
            time.sleep(1)
            roll = subprocess.run(
                [
                    *(sys.executable, str(ROLL), "--config", str(new_config)),
                    *("--path", "/version", "--expect", "version 2", *specs),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            rolled_at = time.monotonic()
            time.sleep(1)
        print(f"\nrolling reload of 3 instances ({engine}): {load.figures({V1, V2})}")
        print(roll.stdout, end="")
        assert roll.returncode == 0, roll.stderr
        assert roll.stderr == ""
        lines = roll.stdout.splitlines()
        assert len(lines) == 3
        for number, (line, instance) in enumerate(zip(lines, fleet.instances, strict=True), 1):
            assert line.startswith(f"[{number}/3] {instance.address}: workers ")
            assert " /version answers 'version 2' (" in line
        assert load.failures({V1, V2}) == []
        versions = Counter(o.body for o in load.outcomes)
        assert versions[V1] > 0 and versions[V2] > 0
        # Once the roll is over, nothing serves the old version.
        late = [o.body for o in load.outcomes if o.start > rolled_at]
        assert late and set(late) == {V2}
        for instance in fleet.instances:
            assert instance.config.read_text() == new_config.read_text()
            for _ in range(3):
                assert http_request(instance.address, "/version") == (200, V2)
            assert "reload refused" not in instance.server.log()
        # A reload is never a failure: nginx had no reason to take an instance out.
        assert [line for line in fleet.nginx_errors() if "upstream" in line] == []


def test_roll_stops_where_a_version_does_not_check(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path / "fleet", "wasmtime", 2)
    try:
        first, second = fleet.instances
        before = [instance.config.read_text() for instance in fleet.instances]
        workers = [descendants(instance.server.process.pid) for instance in fleet.instances]
        broken = tmp_path / "broken.wasm"
        broken.write_bytes(b"\0asm\x01\0\0\0not a module")
        new_config = tmp_path / "modules-v2.toml"
        new_config.write_text(f'[[module]]\nroute = "/version"\nmodule = "{broken}"\n')
        roll = [sys.executable, str(ROLL), "--config", str(new_config)]
        roll += ["--path", "/version", "--expect", "version 2"]

        # An instance that is not running: nothing starts, nothing changes.
        missing = tmp_path / "missing.pid"
        ghost = ["--instance", "127.0.0.1:9", str(missing), str(first.config)]
        result = subprocess.run(
            roll + first.spec() + second.spec() + ghost, capture_output=True, text=True
        )
        assert result.returncode == 2
        assert result.stderr == (
            "roll.py: not started, nothing changed: 127.0.0.1:9: cannot read a pid from "
            f"{missing} ([Errno 2] No such file or directory: '{missing}')\n"
        )

        # The first instance refuses the new configuration: the roll stops there.
        result = subprocess.run(
            roll + first.spec() + second.spec(), capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == (
            f"roll.py: stopped at instance 1/2: {first.address}: the reload was refused (no new "
            "workers after the configuration check); the instance keeps serving the previous "
            f"version, and its log says why; {first.config} is back as it was\n"
            f"roll.py: on the new version: none; not touched: {second.address}\n"
        )
        assert "wagi: reload refused" in first.server.log()
        assert "Handling signal: hup" in first.server.log()
        assert "Handling signal: hup" not in second.server.log()
        assert [instance.config.read_text() for instance in fleet.instances] == before
        assert [descendants(i.server.process.pid) for i in fleet.instances] == workers
        for instance in fleet.instances:
            assert http_request(instance.address, "/version") == (200, V1)

        # Without --config, only reloads: modules.toml was changed by other means.
        for instance in fleet.instances:
            instance.config.write_text(fleet.config_text(2))
        result = subprocess.run(
            [
                *(sys.executable, str(ROLL), "--path", "/version", "--expect", "version 2"),
                *first.spec(),
                *second.spec(),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (result.returncode, result.stderr) == (0, "")
        assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
            "[1/2] 127.0.0.1",
            "[2/2] unix",
        ]
        for instance in fleet.instances:
            assert http_request(instance.address, "/version") == (200, V2)
    finally:
        fleet.stop()


def slow_route(directory: Path) -> str:
    """A route whose module marks the instance's ``marks`` directory, then takes 3 s."""
    (directory / "marks").mkdir()
    return (
        f'[[module]]\nroute = "/slow"\nmodule = "{PROBE}"\n'
        f'volumes = {{ "/marks" = "{directory / "marks"}" }}\n'
    )


SLOW = "/slow?hdr&writefile=/marks/busy:1&sleep=3000&print=done"


def in_flight_then_killed(
    fleet: Fleet, method: str, candidates: list[Instance]
) -> tuple[int, bytes, Instance]:
    """Send ``method SLOW`` through nginx; kill the instance that runs it, mid-module.

    Returns nginx's answer and the instance killed.
    """
    for instance in candidates:
        (instance.directory / "marks" / "busy").unlink(missing_ok=True)
    answer: list[tuple[int, bytes]] = []
    client = threading.Thread(target=lambda: answer.append(fleet.through_nginx(method, SLOW)))
    client.start()
    deadline = time.monotonic() + 30
    owner = None
    while owner is None:
        assert time.monotonic() < deadline, "no instance ran the module"
        owner = next((i for i in candidates if (i.directory / "marks" / "busy").exists()), None)
        time.sleep(0.01)
    owner.kill()
    client.join(timeout=60)
    status, body = answer[0]
    return status, body, owner


def test_only_requests_that_are_safe_to_repeat_go_to_another_instance(tmp_path: Path) -> None:
    # The module run is seen through a volume, which wasmer does not confine: wasmtime only.
    with fleet_behind_nginx(tmp_path, "wasmtime", 4, unix_last=False, extra=slow_route) as fleet:
        alive = list(fleet.instances)

        # A POST whose instance dies while its module runs: nginx does not send it elsewhere
        # (the module may have done its work), the client gets 502 at once.
        status, body, killed = in_flight_then_killed(fleet, "POST", alive)
        alive.remove(killed)
        assert status == 502
        time.sleep(1)
        assert [i for i in alive if (i.directory / "marks" / "busy").exists()] == []
        assert any(
            'request: "POST /slow' in e and "upstream prematurely closed connection" in e
            for e in upstream_errors(fleet, killed)
        )

        # The same for a GET: nginx runs it again on another instance, the client gets 200.
        status, body, killed = in_flight_then_killed(fleet, "GET", alive)
        alive.remove(killed)
        assert (status, body) == (200, b"OK\ndone\n")
        assert len([i for i in alive if (i.directory / "marks" / "busy").exists()]) == 1

        # A POST whose connection is refused never reached wagi: it goes on to the next
        # instance. Once fail_timeout has passed, nginx tries the two dead instances again.
        time.sleep(FAIL_TIMEOUT + 0.5)
        answers = [fleet.through_nginx("POST", "/version", b"x") for _ in range(8)]
        assert answers == [(200, V1)] * 8
        refused = [
            e
            for i in fleet.instances
            if i not in alive
            for e in upstream_errors(fleet, i)
            if 'request: "POST /version' in e and "(111: Connection refused)" in e
        ]
        assert refused, fleet.nginx_errors()


class PortEcho(BaseHTTPRequestHandler):
    """An HTTP/1.1 server that keeps connections open and answers with the client's port."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = str(self.client_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_upstream_keepalive_would_not_keep_a_connection_to_wagi(tmp_path: Path) -> None:
    """Why the site has no ``keepalive``: gunicorn's sync workers close every connection."""
    probe = f'[[module]]\nroute = "/probe"\nmodule = "{PROBE}"\n'
    with fleet_behind_nginx(
        tmp_path / "wagi", "wasmtime", 3, unix_last=False, extra=lambda _: probe, keepalive=True
    ) as fleet:
        ports = [
            env_lines(fleet.through_nginx("GET", "/probe?hdr&env")[1].decode())["REMOTE_PORT"]
            for _ in range(12)
        ]
        # Every request reached wagi from a new nginx port: a new connection each time.
        assert len(set(ports)) == 12

        # The same site in front of a server that keeps connections: nginx reuses them, so
        # the check above can tell.
        echo = ThreadingHTTPServer(("127.0.0.1", 0), PortEcho)
        thread = threading.Thread(target=echo.serve_forever)
        thread.start()
        try:
            address = f"127.0.0.1:{echo.server_address[1]}"
            port = free_port()
            conf = main_config(tmp_path / "control", render_site(port, [address], keepalive=True))
            nginx = start_nginx(conf, f"http://127.0.0.1:{port}/healthz")
            try:
                seen = set()
                for _ in range(12):
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("GET", "/")
                    seen.add(conn.getresponse().read())
                    conn.close()
                assert len(seen) == 1
            finally:
                nginx.stop()
        finally:
            echo.shutdown()
            thread.join()
