"""``deploy/README.md``, run command by command, on a private copy of this machine.

The README's ``sh`` blocks are run verbatim, in order, as root, inside a private mount and
network namespace in which ``/etc`` is a copy of the machine's, ``/opt``, ``/srv`` and ``/var``
are empty directories (the machine's own ``/opt`` entries stay visible) and ``/run`` is a fresh
tmpfs: a bare Debian machine with the packages installed, where ``python3 -m venv /opt/wagi``,
``systemd-sysusers``, ``nginx -t`` and the rest do what they do on a real one, touching nothing
outside the test's directory.

There is no systemd running as PID 1 here, so the few ``systemctl`` commands are carried out
the way systemd carries them out, from the installed unit files: ``enable --now wagi.socket``
creates the socket with the unit's owner and mode and, at the first connection, starts the
service's ``ExecStart`` as its ``User=`` with the socket as fd 3 (``LISTEN_FDS``/``LISTEN_PID``),
its state directories, no capabilities, ``no_new_privs`` and a notify socket;
``reload wagi`` runs ``ExecReload``; ``reload nginx`` starts Debian's nginx. ``apt-get install``
is run by ``./run-tests`` (CI); here the test checks the packages are installed.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.servers import ROOT, env_lines

README = ROOT / "deploy" / "README.md"
UNITS = ROOT / "deploy" / "systemd"
# What a root login shell on Debian has; python3 is then Debian's own.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOTIFY = "/run/wagi-test-notify"

_SETUP = """
set -eu
R=$1
for d in "$R"/opt/*/; do mount --bind "/opt/$(basename "$d")" "$d"; done
mount --rbind "$R/opt" /opt
mount --bind "$R/etc" /etc
mount --bind "$R/srv" /srv
mount --bind "$R/var" /var
mount -t tmpfs -o mode=755 tmpfs /run
ip link set lo up
touch "$R/ready"
exec sleep 3600
"""


def readme_commands() -> list[str]:
    """Every command of the README's ``sh`` blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as ``{section: {key: [values in order]}}``."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


class Machine:
    """The private namespaces; commands run in them through ``nsenter``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.src = tmp / "wagi"
        for name in ("opt", "srv", "var/cache", "var/lib", "var/log/nginx", "var/tmp"):
            (self.root / name).mkdir(parents=True)
        for entry in Path("/opt").iterdir():
            if entry.is_dir():
                (self.root / "opt" / entry.name).mkdir()
        subprocess.run(["cp", "-a", "/etc", str(self.root / "etc")], check=True)
        (tmp / ".curlrc").write_text("max-time = 60\n")
        if Path("/var/lib/nginx").is_dir():
            subprocess.run(["cp", "-a", "/var/lib/nginx", str(self.root / "var/lib")], check=True)
        # A clone of wagi, without the developer's virtualenvs and build output.
        shutil.copytree(
            ROOT,
            self.src,
            ignore=shutil.ignore_patterns(
                ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".*_cache", "site"
            ),
        )
        self.holder = subprocess.Popen(
            [
                *("unshare", "--mount", "--net", "--propagation", "private"),
                *("bash", "-c", _SETUP, "setup", str(self.root)),
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not (self.root / "ready").exists():
            assert self.holder.poll() is None, "could not set up the namespaces (unshare, mount)"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        self.env = {
            "PATH": ROOT_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            # wagi check's default cache, and pip's cache kept between runs.
            "XDG_CACHE_HOME": str(tmp / "xdg-cache"),
            "PIP_CACHE_DIR": os.path.expanduser("~/.cache/pip"),
            # The README's curl commands give up in time if something is broken.
            "CURL_HOME": str(tmp),
        } | {k: v for k, v in os.environ.items() if k.startswith("PIP_") and k != "PIP_CACHE_DIR"}

    def path(self, inside: str) -> Path:
        """The path, as seen from outside, of ``inside`` as seen in the namespaces."""
        return Path(f"/proc/{self.holder.pid}/root{inside}")

    def nsenter(self, *, net: bool, wd: Path | str | None = None) -> list[str]:
        return [
            "nsenter",
            f"--target={self.holder.pid}",
            "--mount",
            *(["--net"] if net else []),
            f"--wd={wd or self.src}",
        ]

    def run(self, command: str, *, net: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a shell command as root in the namespaces; fail the test if it fails."""
        result = subprocess.run(
            [*self.nsenter(net=net), "bash", "-euo", "pipefail", "-c", command],
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result

    def ids(self, table: str, name: str) -> int:
        """A user's uid or a group's gid, from the namespace's own /etc/passwd or /etc/group."""
        for line in self.path(f"/etc/{table}").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
        raise AssertionError(f"no {name!r} in /etc/{table}")

    def stop(self) -> None:
        self.holder.kill()
        self.holder.wait()


class Service:
    """wagi.socket and wagi.service, started the way systemd starts them."""

    def __init__(self, machine: Machine, socket_unit: str) -> None:
        self.machine = machine
        units = "/etc/systemd/system/"
        self.socket_unit = parse_unit(machine.path(units + socket_unit).read_text())["Socket"]
        service_file = units + socket_unit.removesuffix(".socket") + ".service"
        self.unit = parse_unit(machine.path(service_file).read_text())
        self.service = self.unit["Service"]
        self.log_path = machine.tmp / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

        # The notify socket systemd gives a Type=notify service, credentials attached.
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(machine.path(NOTIFY)))
        os.chmod(machine.path(NOTIFY), 0o666)
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

        # The listening socket, as [Socket] says.
        (listen,) = self.socket_unit["ListenStream"]
        assert listen.startswith("/"), "the test follows a unix socket"
        self.listen_path = listen
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(machine.path(listen)))
        os.chown(
            machine.path(listen),
            machine.ids("passwd", self.socket_unit["SocketUser"][-1]),
            machine.ids("group", self.socket_unit["SocketGroup"][-1]),
        )
        os.chmod(machine.path(listen), int(self.socket_unit["SocketMode"][-1], 8))
        self.listener.listen(int(self.socket_unit["Backlog"][-1]))
        # Socket activation: the service starts when the first connection arrives.
        self.started = threading.Event()
        self.waiter = threading.Thread(target=self._start_on_connection, daemon=True)
        self.waiter.start()

    def _start_on_connection(self) -> None:
        try:
            select.select([self.listener], [], [])
        except (OSError, ValueError):  # closed at the end of a test that never connected
            return
        self.start()

    def _as_user(self, command: list[str]) -> list[str]:
        """``command`` run as User=/Group=, with no capabilities and no_new_privs, like systemd."""
        uid = self.machine.ids("passwd", self.service["User"][-1])
        gid = self.machine.ids("group", self.service["Group"][-1])
        return [
            *self.machine.nsenter(net=True, wd="/"),
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            *command,
        ]

    def start(self) -> None:
        uid = self.machine.ids("passwd", self.service["User"][-1])
        gid = self.machine.ids("group", self.service["Group"][-1])
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/nonexistent",
            "USER": self.service["User"][-1],
            "LOGNAME": self.service["User"][-1],
            "LANG": "C.UTF-8",
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": "wagi.socket",
            "NOTIFY_SOCKET": NOTIFY,
        }
        for key, base in (
            ("CacheDirectory", "/var/cache"),
            ("LogsDirectory", "/var/log"),
            ("StateDirectory", "/var/lib"),
        ):
            for name in " ".join(self.service.get(key, [])).split():
                directory = self.machine.path(f"{base}/{name}")
                directory.mkdir(exist_ok=True)
                os.chown(directory, uid, gid)
                env[key.upper().replace("DIRECTORY", "_DIRECTORY")] = f"{base}/{name}"
        for assignment in self.service.get("Environment", []):
            env.update(pair.split("=", 1) for pair in shlex.split(assignment))
        umask = self.service.get("UMask", ["0022"])[-1]
        fd = self.listener.fileno()
        # bash keeps its pid through exec: LISTEN_PID is the pid of gunicorn's master.
        launcher = f'umask {umask}; export LISTEN_PID=$$; exec "$@" 3<&{fd} {fd}<&-'
        exec_start = shlex.split(self.service["ExecStart"][-1])
        command = self._as_user(["bash", "-c", launcher, "launcher", *exec_start])
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, pass_fds=(fd,), stdout=log, stderr=subprocess.STDOUT
            )
        self.started.set()

    def ready(self, timeout: float = 60) -> tuple[str, int]:
        """The next sd_notify message and the pid that sent it."""
        readable, _, _ = select.select([self.notify], [], [], timeout)
        assert readable, f"no sd_notify message:\n{self.log()}"
        message, ancillary, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(
            struct.unpack("3i", data)[0]
            for level, kind, data in ancillary
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
        )
        return message.decode(), pid

    def reload(self) -> None:
        """ExecReload, $MAINPID filled in."""
        assert self.process is not None
        command = self.service["ExecReload"][-1].replace("$MAINPID", str(self.process.pid))
        result = subprocess.run(self._as_user(shlex.split(command)), capture_output=True)
        assert result.returncode == 0, result

    def stop(self) -> int | None:
        """KillSignal= to the main process, and its exit status within TimeoutStopSec=."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(getattr(signal, self.service["KillSignal"][-1]))
        try:
            return self.process.wait(timeout=float(self.service["TimeoutStopSec"][-1]))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return result.stdout == "install ok installed"


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    if os.geteuid() != 0:
        pytest.fail("the deployment test needs root (namespaces, mounts, another user)")
    machine = Machine(tmp_path_factory.mktemp("deploy"))
    yield machine
    machine.stop()


def test_the_deploy_readme_takes_a_bare_machine_to_a_running_service(machine: Machine) -> None:
    service: Service | None = None
    nginx_started = False
    curls: list[str] = []
    try:
        for command in readme_commands():
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                missing = [p for p in words[2:] if not p.startswith("-") and not _installed(p)]
                assert not missing, f"./run-tests should have installed {missing}"
            elif words == ["systemctl", "daemon-reload"]:
                pass  # the units are read from disk when they start, below
            elif words[:3] == ["systemctl", "enable", "--now"]:
                machine.run(f"systemctl enable {words[3]}")
                wants = machine.path(f"/etc/systemd/system/sockets.target.wants/{words[3]}")
                assert os.readlink(wants) == f"/etc/systemd/system/{words[3]}"
                service = Service(machine, words[3])
            elif words == ["systemctl", "reload", "nginx"]:
                # Not running yet: Debian's nginx.service starts it with this command.
                machine.run("/usr/sbin/nginx -g 'daemon on; master_process on;'", net=True)
                nginx_started = True
            elif words == ["systemctl", "reload", "wagi"]:
                assert service is not None
                service.reload()
                assert "Handling signal: hup" in _wait_for(service, "Handling signal: hup")
            elif words[0] == "curl":
                curls.append(machine.run(command, net=True).stdout)
            else:
                result = machine.run(command)
                if words[:2] == ["systemd-analyze", "verify"]:
                    assert result.stdout + result.stderr == "", "verify should find nothing"
                if words == ["nginx", "-t"]:
                    assert "[warn]" not in result.stderr and "successful" in result.stderr
                if words[0] == "runuser":
                    assert "engine wasmtime" in result.stdout

        assert service is not None and service.process is not None and nginx_started
        # The first request through nginx started the service, which reported ready.
        assert service.started.is_set()
        message, sender = service.ready()
        assert message.startswith("READY=1"), message
        assert sender == service.process.pid  # NotifyAccess=main
        assert curls[0] == "Hello, world!\n"
        env = env_lines(curls[1])
        assert (env["HTTPS"], env["REMOTE_ADDR"]) == ("on", "127.0.0.1")
        assert env["X_FULL_URL"] == "https://localhost/env/some/path"
        assert env["SERVER_NAME"] == "localhost"

        # It runs as the `wagi` user the README created, and owns its cache.
        wagi_uid = machine.ids("passwd", "wagi")
        assert _uid_of(service.process.pid) == wagi_uid
        cached = list(machine.path("/var/cache/wagi").rglob("*"))
        assert cached and all(p.stat().st_uid == wagi_uid for p in cached)

        # After the reload (systemctl reload wagi, above), still serving.
        out = machine.run("curl -sS http://localhost/routes/hello", net=True).stdout
        assert out.startswith("This is the routes sample")
        assert service.stop() == 0
    finally:
        if service is not None:
            service.stop()
            service.listener.close()
            service.notify.close()
        if nginx_started:
            subprocess.run([*machine.nsenter(net=True), "/usr/sbin/nginx", "-s", "quit"])


def _wait_for(service: Service, text: str) -> str:
    deadline = time.monotonic() + 30
    while text not in service.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    return service.log()


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def test_the_service_is_hardened() -> None:
    """systemd's own review of the sandboxing: exposure 1.5 or less out of 10."""
    result = subprocess.run(
        [
            *("systemd-analyze", "security", "--offline=true", "--threshold=15"),
            str(UNITS / "wagi.service"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]
