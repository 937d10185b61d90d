#!/usr/bin/env python3
"""Roll a new module version across a fleet of wagi instances, one instance at a time.

For each instance in the order given: install the new ``modules.toml`` (atomically, when
``--config`` is given), send ``HUP`` to its gunicorn master, and wait until it has switched:
the master has checked the new configuration (wagi's ``on_reload`` hook runs ``wagi check``
and refuses a configuration that does not check), new workers have replaced every old one,
and the instance itself, asked through its own address (not through nginx), answers ``--path``
with ``200`` and a body containing ``--expect``. Only then is the next instance touched, so
a version that does not work stops the roll on the first instance while the others, and
nginx's failover, keep serving::

    deploy/fleet/roll.py --config modules-v2.toml --path /hello --expect 'hello v2' \\
        --instance 127.0.0.1:3001 /run/wagi/1.pid /srv/wagi/1/modules.toml \\
        --instance 127.0.0.1:3002 /run/wagi/2.pid /srv/wagi/2/modules.toml \\
        --instance unix:/run/wagi/3.sock /run/wagi/3.pid /srv/wagi/3/modules.toml

An instance is its address in gunicorn's ``--bind`` form (``HOST:PORT`` or ``unix:PATH``), the
pid file its master writes (gunicorn's ``--pid``) and the path of its ``modules.toml``. Without
``--config`` nothing is installed and each instance is only reloaded in turn: for an ``oci://``
tag that now names a new version, or a ``modules.toml`` already changed by other means.

When an instance refuses the reload, the roll stops there: that instance keeps serving the
previous version (its log says why), its previous ``modules.toml`` is put back so that the
file matches what runs, and the instances after it are not touched. Exit status: 0 when every
instance serves the new version, 1 when the roll stopped, 2 when it could not start (an
instance down or misdescribed: nothing was changed).

It runs on the instances' host (it signals their masters and reads ``/proc``), with any
Python 3.8 or newer and nothing but the standard library. For a fleet over several hosts, run
it on each host in turn (``ssh host deploy/fleet/roll.py ...``). It relies on one detail of
gunicorn's reload (true since gunicorn 19): the master rewrites its pid file once the
``on_reload`` hook has returned, before it starts the new workers; that is how a refused
reload is told apart from a slow check.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

POLL = 0.05
"""Seconds between looks at an instance's processes and pid file."""

SPAWN_GRACE = 10.0
"""Seconds after the check within which an accepted reload has forked its new workers."""


class RollError(Exception):
    """The roll stops: one line saying which instance and why."""


@dataclass(frozen=True)
class Instance:
    """One wagi instance: its address (``HOST:PORT`` or ``unix:PATH``), pid file, config."""

    address: str
    pidfile: Path
    config: Path

    def __str__(self) -> str:
        return self.address


def master_pid(instance: Instance) -> int:
    """The pid of the instance's running gunicorn master, from its pid file."""
    try:
        pid = int(instance.pidfile.read_text().strip())
    except (OSError, ValueError) as e:
        raise RollError(f"{instance}: cannot read a pid from {instance.pidfile} ({e})") from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise RollError(
            f"{instance}: its master (pid {pid}, {instance.pidfile}) is not running"
        ) from None
    return pid


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``: a gunicorn master's workers."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def pidfile_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when gunicorn rewrites its pid file (None while it is missing)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (gunicorn's ``--bind unix:PATH``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def fetch(address: str, path: str, timeout: float) -> tuple[int, bytes]:
    """``GET path`` from one instance directly; its status and body."""
    conn: http.client.HTTPConnection
    if address.startswith("unix:"):
        conn = UnixHTTPConnection(address[len("unix:") :], timeout)
    else:
        host, _, port = address.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def install(data: bytes, target: Path) -> None:
    """Replace ``target`` with ``data`` in one rename: a reload never reads half a file."""
    st = target.stat()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, st.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def wait_for(what: Callable[[], bool], deadline: float, failure: Callable[[], str]) -> None:
    """Poll ``what`` until it holds; past ``deadline``, stop the roll with ``failure()``."""
    while not what():
        if time.monotonic() > deadline:
            raise RollError(failure())
        time.sleep(POLL)


def preflight(instance: Instance, installing: bool, timeout: float) -> None:
    """Refuse to start a roll on an instance that is down or described wrongly."""
    pid = master_pid(instance)
    if not children(pid):
        raise RollError(f"{instance}: its master (pid {pid}) has no workers")
    if installing and not instance.config.is_file():
        raise RollError(f"{instance}: {instance.config} is not a file")
    try:
        status, _ = fetch(instance.address, "/healthz", timeout)
    except OSError as e:
        raise RollError(f"{instance}: /healthz: {e}") from None
    if status != 200:
        raise RollError(f"{instance}: /healthz answered {status}")


def roll_one(
    instance: Instance, new_config: bytes | None, path: str, expect: str, timeout: float
) -> str:
    """Reload one instance onto the new version; a summary of what happened."""
    start = time.monotonic()
    deadline = start + timeout
    pid = master_pid(instance)
    old_workers = children(pid)
    stamp = pidfile_stamp(instance.pidfile)
    previous = None
    if new_config is not None:
        previous = instance.config.read_bytes()
        install(new_config, instance.config)
    os.kill(pid, signal.SIGHUP)

    def alive() -> None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise RollError(f"{instance}: its master (pid {pid}) died during the reload") from None

    def checked() -> bool:
        alive()
        new_stamp = pidfile_stamp(instance.pidfile)
        return new_stamp is not None and new_stamp != stamp

    # The master runs wagi's check (on_reload) first, then rewrites its pid file.
    wait_for(
        checked,
        deadline,
        lambda: f"{instance}: the master did not finish checking the configuration in {timeout:g}s",
    )
    # Accepted: the new workers are forked at once. Refused: none are.
    try:
        wait_for(lambda: bool(children(pid) - old_workers), time.monotonic() + SPAWN_GRACE, str)
    except RollError:
        message = (
            f"{instance}: the reload was refused (no new workers after the configuration "
            "check); the instance keeps serving the previous version, and its log says why"
        )
        if previous is not None:
            install(previous, instance.config)
            message += f"; {instance.config} is back as it was"
        raise RollError(message) from None
    # The old workers finish the requests they hold, then exit.
    wait_for(
        lambda: not (children(pid) & old_workers),
        deadline,
        lambda: f"{instance}: old workers still running after {timeout:g}s",
    )
    new_workers = sorted(children(pid))
    last = "no answer"

    def serves() -> bool:
        nonlocal last
        try:
            status, body = fetch(instance.address, path, max(1.0, deadline - time.monotonic()))
        except OSError as e:
            last = str(e)
            return False
        last = f"{status} {body[:200]!r}"
        return status == 200 and expect.encode() in body

    wait_for(
        serves,
        deadline,
        lambda: (
            f"{instance}: reloaded, but {path} does not answer 200 with {expect!r} "
            f"within {timeout:g}s (last answer: {last})"
        ),
    )
    return (
        f"workers {', '.join(map(str, sorted(old_workers)))} -> "
        f"{', '.join(map(str, new_workers))}; {path} answers {expect!r} "
        f"({time.monotonic() - start:.1f}s)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="roll.py",
        description="Roll a new module version across wagi instances, one at a time "
        "(install modules.toml, HUP, wait until it serves the new version, next).",
    )
    parser.add_argument(
        "--instance",
        nargs=3,
        action="append",
        required=True,
        metavar=("ADDRESS", "PIDFILE", "CONFIG"),
        help="an instance: its address (HOST:PORT or unix:PATH, as gunicorn's --bind), its "
        "master's pid file (gunicorn's --pid) and its modules.toml; repeat, in roll order",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the new modules.toml, installed in place of each instance's CONFIG "
        "(without it, each instance is only reloaded)",
    )
    parser.add_argument("--path", required=True, help="a route that shows the version, e.g. /hello")
    parser.add_argument(
        "--expect",
        required=True,
        help="text that the new version's answer to --path contains (with status 200)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds one instance may take to switch (default 120)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="seconds to wait after each instance before the next (default 0)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    instances = [Instance(a, Path(p), Path(c)) for a, p, c in args.instance]
    new_config = args.config.read_bytes() if args.config else None
    try:
        for instance in instances:
            preflight(instance, new_config is not None, args.timeout)
    except RollError as e:
        print(f"roll.py: not started, nothing changed: {e}", file=sys.stderr)
        return 2
    for number, instance in enumerate(instances, 1):
        try:
            summary = roll_one(instance, new_config, args.path, args.expect, args.timeout)
        except RollError as e:
            done = ", ".join(map(str, instances[: number - 1])) or "none"
            untouched = ", ".join(map(str, instances[number:])) or "none"
            print(
                f"roll.py: stopped at instance {number}/{len(instances)}: {e}\n"
                f"roll.py: on the new version: {done}; not touched: {untouched}",
                file=sys.stderr,
            )
            return 1
        print(f"[{number}/{len(instances)}] {instance}: {summary}", flush=True)
        if args.pause and number < len(instances):
            time.sleep(args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
