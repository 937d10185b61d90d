"""The kernel wall (wagi.execution.landlock), alone and under real engines.

Every confinement happens in a fresh thread: Landlock confines the calling
thread for good, and pytest's own thread must keep its access.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from wagi.config import load_config
from wagi.engines import engine_class
from wagi.engines.base import Preopen
from wagi.execution.landlock import (
    Availability,
    PathRule,
    Report,
    WallError,
    availability,
    describe,
    restrict_current_thread,
)
from wagi.execution.wall import plan_walls

from ..support.servers import ENGINES, MODULES, PROBE, ROOT

AVAILABLE = availability()
pytestmark = pytest.mark.skipif(not AVAILABLE.ok, reason=f"no Landlock here: {AVAILABLE.why}")

T = TypeVar("T")


def in_thread(body: Callable[[], T]) -> T:
    """Run ``body`` in a new thread and return its result (or raise its exception)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = body()
        except BaseException as exc:  # handed to the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def confined(rules: list[PathRule], body: Callable[[], T], *, deny_network: bool = True) -> T:
    """``body``'s result, run in a fresh thread confined to ``rules``."""

    def run() -> T:
        restrict_current_thread(rules, deny_network=deny_network)
        return body()

    return in_thread(run)


def attempt(action: Callable[[], object]) -> str:
    """``"ok"`` (or what ``action`` returned, as text), else the errno name."""
    try:
        value = action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, repr(exc))
    return "ok" if value is None else str(value)


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A volume, a read-only volume, another route's volume and things outside them."""
    data, ro, other, outside = (tmp_path / n for n in ("data", "ro", "other", "outside"))
    for d in (data, ro, other, outside):
        d.mkdir()
    (data / "hello.txt").write_text("hello from the volume\n")
    (data / "sub").mkdir()
    (ro / "fixed.txt").write_text("read only\n")
    (ro / "emptydir").mkdir()
    (other / "theirs.txt").write_text("ANOTHER ROUTE\n")
    (outside / "secret.txt").write_text("TOP SECRET\n")
    (tmp_path / "sibling.txt").write_text("SIBLING\n")
    os.symlink(outside / "secret.txt", data / "abs-link")
    os.symlink("../outside/secret.txt", data / "rel-link")
    os.symlink(outside, data / "dir-link")
    os.symlink(ro / "fixed.txt", data / "ro-link")
    return {"root": tmp_path, "data": data, "ro": ro, "other": other, "outside": outside}


def volume_rules(layout: dict[str, Path]) -> list[PathRule]:
    return [PathRule(layout["data"], writable=True), PathRule(layout["ro"])]


# -- the wall alone -------------------------------------------------------------------------


def test_availability_names_the_abi() -> None:
    ok, abi, why = availability()
    assert ok and abi >= 1 and why == ""
    assert Availability(True, 7, "").gaps == ()
    assert Availability(True, 2, "").gaps == (
        "truncating a file in a read-only path (needs Landlock ABI 3, Linux 6.2)",
        "TCP bind and connect (needs Landlock ABI 4, Linux 6.7)",
        "abstract unix sockets and signals to other processes (needs Landlock ABI 6, Linux 6.12)",
    )
    assert Availability(False, 0, "no").gaps == ()


def test_reading_outside_the_rules_is_refused(layout: dict[str, Path]) -> None:
    secret = layout["outside"] / "secret.txt"

    def body() -> list[str]:
        return [
            attempt(lambda: (layout["data"] / "hello.txt").read_text().strip()),
            attempt(secret.read_text),
            attempt(lambda: os.listdir(layout["outside"])),
            attempt(lambda: Path("/etc/passwd").read_text()),
        ]

    assert confined(volume_rules(layout), body) == [
        "hello from the volume",
        "EACCES",
        "EACCES",
        "EACCES",
    ]
    with pytest.raises(PermissionError):
        confined(volume_rules(layout), secret.read_text)


def test_read_only_rule_allows_reading_and_listing_only(layout: dict[str, Path]) -> None:
    ro = layout["ro"]
    fixed = ro / "fixed.txt"

    def body() -> list[str]:
        return [
            attempt(lambda: fixed.read_text().strip()),
            attempt(lambda: ",".join(sorted(os.listdir(ro)))),
            attempt(lambda: os.open(fixed, os.O_WRONLY) and None),
            attempt(lambda: fixed.write_text("changed")),
            attempt(lambda: (ro / "new.txt").write_text("x")),
            attempt(lambda: os.unlink(fixed)),
            attempt(lambda: os.truncate(fixed, 0)),
            attempt(lambda: os.mkdir(ro / "newdir")),
            attempt(lambda: os.rmdir(ro / "emptydir")),
            attempt(lambda: os.symlink("fixed.txt", ro / "link")),
            attempt(lambda: os.rename(fixed, ro / "moved.txt")),
        ]

    assert confined(volume_rules(layout), body) == [
        "read only",
        "emptydir,fixed.txt",
        *["EACCES"] * 9,
    ]
    assert fixed.read_text() == "read only\n"
    assert sorted(os.listdir(ro)) == ["emptydir", "fixed.txt"]


def test_writable_rule_allows_what_a_volume_needs(layout: dict[str, Path]) -> None:
    data = layout["data"]

    def body() -> list[str]:
        return [
            attempt(lambda: (data / "new.txt").write_text("new") and None),
            attempt(lambda: os.truncate(data / "hello.txt", 5)),
            attempt(lambda: os.mkdir(data / "dir")),
            attempt(lambda: os.rename(data / "new.txt", data / "sub" / "moved.txt")),
            attempt(lambda: os.symlink("moved.txt", data / "sub" / "link")),
            attempt(lambda: (data / "sub" / "link").read_text()),
            attempt(lambda: os.unlink(data / "sub" / "link")),
            attempt(lambda: os.rmdir(data / "dir")),
            # Still no devices, fifos or sockets, and nothing executes.
            attempt(lambda: os.mkfifo(data / "fifo")),
            attempt(lambda: os.execv(data / "hello.txt", ["x"])),
        ]

    assert confined(volume_rules(layout), body) == [
        *["ok"] * 5,
        "new",
        "ok",
        "ok",
        "EACCES",
        "EACCES",
    ]
    assert (data / "hello.txt").read_text() == "hello"
    assert (data / "sub" / "moved.txt").read_text() == "new"


def test_dotdot_and_host_symlinks_out_of_a_rule_are_refused(layout: dict[str, Path]) -> None:
    data = layout["data"]

    def body() -> list[str]:
        return [
            attempt(lambda: Path(f"{data}/../sibling.txt").read_text()),
            attempt(lambda: Path(f"{data}/../outside/secret.txt").read_text()),
            attempt(lambda: os.listdir(f"{data}/..")),
            attempt((data / "abs-link").read_text),
            attempt((data / "rel-link").read_text),
            attempt((data / "dir-link" / "secret.txt").read_text),
            attempt(lambda: os.listdir(data / "dir-link")),
            attempt(lambda: (data / "rel-link").write_text("pwned")),
            # A link into another granted tree gets that tree's access: read, not write.
            attempt(lambda: (data / "ro-link").read_text().strip()),
            attempt(lambda: (data / "ro-link").write_text("changed")),
        ]

    assert confined(volume_rules(layout), body) == [
        *["EACCES"] * 8,
        "read only",
        "EACCES",
    ]
    assert (layout["outside"] / "secret.txt").read_text() == "TOP SECRET\n"


def test_symlink_made_inside_pointing_out_is_refused(layout: dict[str, Path]) -> None:
    data = layout["data"]
    secret = layout["outside"] / "secret.txt"

    def body() -> list[str]:
        return [
            attempt(lambda: os.symlink(secret, data / "mine")),
            attempt(lambda: os.symlink("../outside", data / "mine-dir")),
            attempt((data / "mine").read_text),
            attempt(lambda: (data / "mine").write_text("pwned")),
            attempt(lambda: os.listdir(data / "mine-dir")),
            attempt(lambda: os.link(secret, data / "hard")),
        ]

    assert confined(volume_rules(layout), body) == ["ok", "ok", *["EACCES"] * 3, "EXDEV"]
    assert secret.read_text() == "TOP SECRET\n"


def test_files_opened_before_confinement_stay_usable(layout: dict[str, Path]) -> None:
    # Why an engine opens what it needs (say /dev/null) before its thread is confined.
    def body() -> list[str]:
        with open(layout["outside"] / "secret.txt") as before:
            restrict_current_thread([], deny_network=True)
            return [before.read().strip(), attempt(lambda: open(os.devnull).close())]

    assert in_thread(body) == ["TOP SECRET", "EACCES"]


def test_only_the_confined_thread_and_its_children_are_confined(layout: dict[str, Path]) -> None:
    secret = layout["outside"] / "secret.txt"
    confined_now = threading.Event()
    release = threading.Event()
    seen: dict[str, str] = {}

    def child() -> None:
        seen["child"] = attempt(lambda: secret.read_text().strip())

    def body() -> None:
        restrict_current_thread(volume_rules(layout), deny_network=True)
        seen["confined"] = attempt(lambda: secret.read_text().strip())
        thread = threading.Thread(target=child)
        thread.start()
        thread.join()
        confined_now.set()
        release.wait(30)

    thread = threading.Thread(target=body)
    thread.start()
    try:
        assert confined_now.wait(30)
        # This thread, and a sibling started now, still reach everything.
        assert secret.read_text() == "TOP SECRET\n"
        assert in_thread(lambda: secret.read_text()) == "TOP SECRET\n"
    finally:
        release.set()
        thread.join()
    assert seen == {"confined": "EACCES", "child": "EACCES"}


def test_confinement_cannot_be_undone(layout: dict[str, Path]) -> None:
    secret = layout["outside"] / "secret.txt"
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_get_no_new_privs = 38, 39

    def body() -> list[str]:
        restrict_current_thread(volume_rules(layout), deny_network=True)
        # A wider ruleset stacks on the first: access is what both allow.
        restrict_current_thread([PathRule(Path("/"), writable=True)], deny_network=False)
        unset = libc.prctl(pr_set_no_new_privs, 0, 0, 0, 0)
        return [
            attempt(secret.read_text),
            attempt(lambda: (layout["ro"] / "new.txt").write_text("x")),
            f"unset no_new_privs: {unset} {errno.errorcode.get(ctypes.get_errno())}",
            f"no_new_privs: {libc.prctl(pr_get_no_new_privs, 0, 0, 0, 0)}",
        ]

    assert confined(volume_rules(layout), body) == [
        "EACCES",
        "EACCES",
        "unset no_new_privs: -1 EINVAL",
        "no_new_privs: 1",
    ]
    # The process's main thread was never touched.
    assert libc.prctl(pr_get_no_new_privs, 0, 0, 0, 0) == 0


@pytest.mark.skipif(AVAILABLE.abi < 4, reason="TCP rules need Landlock ABI 4")
def test_network_denial(layout: dict[str, Path]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = listener.getsockname()

        def connect_and_bind() -> list[str]:
            with socket.socket() as a, socket.socket() as b:
                return [
                    attempt(lambda: a.connect(address)),
                    attempt(lambda: b.bind(("127.0.0.1", 0))),
                ]

        assert confined([], connect_and_bind, deny_network=True) == ["EACCES", "EACCES"]
        assert confined([], connect_and_bind, deny_network=False) == ["ok", "ok"]


@pytest.mark.skipif(AVAILABLE.abi < 6, reason="scoping needs Landlock ABI 6")
def test_abstract_sockets_and_signals_stay_inside(layout: dict[str, Path]) -> None:
    name = f"\0wagi-test-{os.getpid()}-{threading.get_ident()}"
    with (
        socket.socket(socket.AF_UNIX) as listener,
        subprocess.Popen(["sleep", "30"]) as other_process,
    ):
        listener.bind(name)
        listener.listen()

        def reach_out() -> list[str]:
            with socket.socket(socket.AF_UNIX) as s:
                return [
                    attempt(lambda: s.connect(name)),
                    attempt(lambda: os.kill(other_process.pid, 0)),
                    # Its own process is inside its domain: the worker can still signal itself.
                    attempt(lambda: os.kill(os.getpid(), 0)),
                ]

        try:
            assert confined([], reach_out) == ["EPERM", "EPERM", "ok"]
        finally:
            other_process.kill()


def test_a_missing_path_is_refused_and_nothing_is_confined(layout: dict[str, Path]) -> None:
    missing = layout["root"] / "missing"

    def body() -> str:
        with pytest.raises(WallError) as info:
            restrict_current_thread([PathRule(missing)], deny_network=True)
        assert str(info.value) == f"{missing}: cannot grant access: No such file or directory"
        return (layout["outside"] / "secret.txt").read_text()

    assert in_thread(body) == "TOP SECRET\n"


def test_report_and_description(layout: dict[str, Path]) -> None:
    rules = volume_rules(layout)
    report = confined([], lambda: restrict_current_thread(rules, deny_network=True))
    assert isinstance(report, Report)
    assert (report.abi, report.rules, report.gaps) == (AVAILABLE.abi, tuple(rules), AVAILABLE.gaps)
    assert report.network_denied is (AVAILABLE.abi >= 4)
    assert report.scoped is (AVAILABLE.abi >= 6)
    assert report.seconds > 0
    assert report.describe() == describe(rules, deny_network=True)
    assert describe(rules, deny_network=True, available=Availability(True, 7, "")) == (
        f"Landlock ABI 7: the thread may reach read-write {layout['data']}, "
        f"read-only {layout['ro']}; nothing else on the file system; no TCP bind or connect; "
        "no abstract unix sockets or signals outside its domain"
    )
    assert describe([], deny_network=False, available=Availability(True, 3, "")) == (
        "Landlock ABI 3: the thread may reach no path; nothing else on the file system; "
        "this kernel cannot refuse abstract unix sockets and signals to other processes "
        "(needs Landlock ABI 6, Linux 6.12)"
    )
    assert describe([], deny_network=True, available=Availability(False, 0, "why not")) == (
        "no kernel wall: why not"
    )


# -- under real engines ---------------------------------------------------------------------

ESCAPER = MODULES / "escaper.wat"
WASI_EPERM = "ERR 63\n"


def scenario(engine_name: str, modules: list[Path], threads: list[dict[str, Any]]) -> list[Any]:
    """Each thread's outputs, run by ``tests.support.wall_scenario`` in a fresh process."""
    spec = {"engine": engine_name, "modules": [str(m) for m in modules], "threads": threads}
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.wall_scenario", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def thread(
    rules: list[PathRule] | None, preopens: list[Preopen], jobs: list[tuple[int, list[str]]]
) -> dict[str, Any]:
    return {
        "rules": None if rules is None else [[str(r.path), r.writable] for r in rules],
        "preopens": [[p.guest_path, str(p.host_path), p.read_only] for p in preopens],
        "jobs": jobs,
    }


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def fd_of(engine_name: str, volume: int) -> str:
    """The WASI fd of the ``volume``-th preopen: from fd 3 on every engine (wasmer's
    virtual / follows the volumes)."""
    return str(volume + 3)


EPERM = "ERR EPERM (Operation not permitted)\n"
EACCES = "ERR EACCES (Permission denied)\n"
SYMLINK_ESCAPES = [
    "readfile=/data/abs-link",
    "readfile=/data/rel-link",
    "readfile=/data/dir-link/secret.txt",
    "ls=/data/dir-link",
    "writefile=/data/rel-link:pwned",
]
PATH_ESCAPES = ["readfile=/data/../sibling.txt", "ls=/data/..", "readfile=/etc/passwd", "ls=/"]


def test_the_wall_alone_holds_a_module_that_its_engine_lets_out(
    engine_name: str, layout: dict[str, Path]
) -> None:
    data, other, outside = layout["data"], layout["other"], layout["outside"]
    preopens = [Preopen("/data", data)]
    d = fd_of(engine_name, 0)
    probe_jobs = [(0, ["/p", op]) for op in SYMLINK_ESCAPES + PATH_ESCAPES]
    # The escaper hands absolute host paths to the engine as they are (wasi-libc would not).
    escaper_jobs = [
        (1, ["/e", d, "r", str(outside / "secret.txt")]),
        (1, ["/e", d, "r", str(other / "theirs.txt")]),
        (1, ["/e", d, "r", "/etc/passwd"]),
        (1, ["/e", d, "w", str(other / "theirs.txt")]),
        (1, ["/e", d, "w", str(layout["root"] / "pwned.txt")]),
    ]
    walled, free = scenario(
        engine_name,
        [PROBE, ESCAPER],
        [
            thread([PathRule(data, writable=True)], preopens, probe_jobs + escaper_jobs),
            # The same, unconfined: what the engine's own WASI layer lets through.
            thread(None, preopens, probe_jobs[:3] + escaper_jobs[:4]),
        ],
    )
    if engine_name == "wasmer":
        assert walled == [
            *[EPERM] * 5,  # refused by the kernel: wasmer follows host symlinks (see below)
            "ERR ENOENT (No such file or directory)\n",  # wasmer's virtual root has no ..
            "/data\n",  # the virtual root: the names of the volumes, nothing of the host
            "ERR ENOENT (No such file or directory)\n",
            "/data\n",
            *[WASI_EPERM] * 5,  # refused by the kernel
        ]
        # Without the wall, wasmer's WASI layer takes the module anywhere.
        assert free == [
            *["TOP SECRET\n"] * 4,
            "ANOTHER ROUTE\n",
            Path("/etc/passwd").read_text()[:4096],
            "OK\n",
        ]
        assert (other / "theirs.txt").read_text() == "pwned"
    else:  # wasmtime refuses by itself; the wall is a second refusal below it
        assert walled == [
            *[EPERM] * 7,
            "ERR ENOTCAPABLE (Capabilities insufficient)\n",
            "ERR ENOTCAPABLE (Capabilities insufficient)\n",
            *[WASI_EPERM] * 5,
        ]
        assert free == [*[EPERM] * 3, *[WASI_EPERM] * 4]
        assert (other / "theirs.txt").read_text() == "ANOTHER ROUTE\n"
    assert (outside / "secret.txt").read_text() == "TOP SECRET\n"
    assert not (layout["root"] / "pwned.txt").exists()


def test_a_walled_module_keeps_its_own_volumes(engine_name: str, layout: dict[str, Path]) -> None:
    data, ro = layout["data"], layout["ro"]
    preopens = [Preopen("/data", data), Preopen("/ro", ro, read_only=engine_name != "wasmer")]
    jobs = [
        (0, ["/p", "readfile=/data/hello.txt"]),
        (0, ["/p", "ls=/data"]),
        (0, ["/p", "writefile=/data/new.txt:written", "readfile=/data/new.txt"]),
        (0, ["/p", "mkdir=/data/dir", "rm=/data/dir", "rm=/data/new.txt"]),
        (0, ["/p", "ls=/ro"]),
        (0, ["/p", "readfile=/ro/fixed.txt"]),
        (0, ["/p", "writefile=/ro/fixed.txt:changed"]),
        (0, ["/p", "writefile=/ro/new.txt:x"]),
        (0, ["/p", "rm=/ro/fixed.txt"]),
        (0, ["/p", "mkdir=/ro/dir"]),
    ]
    [out] = scenario(engine_name, [PROBE], [thread(volume_rules(layout), preopens, jobs)])
    assert out[:5] == [
        "hello from the volume\n",
        "abs-link\ndir-link\nhello.txt\nrel-link\nro-link\nsub\n",
        "OK\nwritten",
        "OK\nOK\nOK\n",
        "emptydir\nfixed.txt\n",
    ]
    if engine_name == "wasmer":
        # wasmer has no read-only preopens, and it opens every file read-write, even to
        # read it: under a read-only rule the kernel refuses the read as well.
        assert out[5:] == [EPERM, EPERM, EPERM, "ERR ENOTDIR (Not a directory)\n", EPERM]
    else:
        assert out[5:] == ["read only\n", *[EPERM] * 4]
    assert (ro / "fixed.txt").read_text() == "read only\n"
    assert sorted(os.listdir(ro)) == ["emptydir", "fixed.txt"]


def test_an_engine_needs_nothing_but_the_volumes_once_loaded(engine_name: str) -> None:
    """No path beyond the volumes: no /dev/null, no module file, no cache, no library."""
    jobs = [
        (0, ["/p", "hdr", "print=one"]),
        (0, ["/p", "print=two", "err=e"]),
        (0, ["/p", "exit=3"]),
    ]
    assert scenario(engine_name, [PROBE], [thread([], [], jobs)]) == [
        ["Content-Type: text/plain\n\none\n", "two\n", "ENDED exited"]
    ]


@pytest.mark.skipif("wasmtime" not in ENGINES, reason="wasmtime does not import")
def test_wasmtime_file_io_runs_on_threads_its_first_callers_created(
    layout: dict[str, Path],
) -> None:
    """A measured fact the runner design must respect (wasmtime-py 50).

    wasmtime's WASI does file I/O on tokio threads created by whichever thread first
    needed one, and reused by every thread after it. Those threads carry their creator's
    confinement, not the caller's: a confined caller's file I/O can run unconfined, and a
    caller confined to its own volume can be refused it because another confined thread
    created the pool. Per-thread rules therefore confine wasmtime's file I/O only when
    every thread that runs WASI modules in the process is confined the same way.
    """
    data, ro = layout["data"], layout["ro"]
    read_data = [(0, ["/p", "readfile=/data/hello.txt"])]
    read_ro = [(0, ["/p", "readfile=/ro/fixed.txt"])]
    # The first confined caller creates the pool: the second is refused its own volume.
    assert scenario(
        "wasmtime",
        [PROBE],
        [
            thread([PathRule(data)], [Preopen("/data", data)], read_data),
            thread([PathRule(ro)], [Preopen("/ro", ro)], read_ro),
        ],
    ) == [["hello from the volume\n"], [EACCES]]
    # An unconfined first caller: a thread confined read-only writes anyway.
    write = [(0, ["/p", "writefile=/data/hello.txt:written"])]
    assert scenario(
        "wasmtime",
        [PROBE],
        [
            thread(None, [Preopen("/data", data)], read_data),
            thread([PathRule(data)], [Preopen("/data", data)], write),
        ],
    ) == [["hello from the volume\n"], ["OK\n"]]
    assert (data / "hello.txt").read_text() == "written"


@pytest.mark.skipif("wasmtime" not in ENGINES, reason="wasmtime does not import")
def test_the_worker_wall_alone_holds_wasmtime_given_the_whole_host(
    layout: dict[str, Path],
) -> None:
    """The wall wagi plans for a wasmtime worker (wagi.execution.wall), under a module that its
    engine lets reach the whole host: a deliberately unconfined preopen of ``/``."""
    root, data, ro, other, outside = (layout[k] for k in ("root", "data", "ro", "other", "outside"))
    config_path = root / "modules.toml"
    config_path.write_text(
        f'[[module]]\nroute = "/p"\nmodule = "{PROBE}"\n'
        f'volumes = {{ "/data" = "{data}", "/ro" = {{ path = "{ro}", read_only = true }} }}\n'
    )
    cache, transient = root / "cache", root / "transient"
    cache.mkdir()
    transient.mkdir()
    plan = plan_walls(
        engine_class("wasmtime").capabilities, load_config(config_path), "auto", cache, transient
    )
    assert plan.worker is not None and not plan.routes
    jobs = [
        (0, ["/p", f"readfile=/host{data}/hello.txt"]),
        (0, ["/p", f"writefile=/host{transient}/body:spooled", f"readfile=/host{transient}/body"]),
        (0, ["/p", f"readfile=/host{ro}/fixed.txt"]),
        (0, ["/p", f"writefile=/host{ro}/fixed.txt:changed"]),
        (0, ["/p", f"readfile=/host{outside}/secret.txt"]),
        (0, ["/p", f"readfile=/host{other}/theirs.txt"]),
        (0, ["/p", f"readfile=/host{config_path}"]),
        (0, ["/p", f"writefile=/host{cache}/planted:code"]),
        (0, ["/p", "readfile=/host/etc/passwd"]),
        (0, ["/p", f"ls=/host{root}"]),
    ]
    rules = [[str(r.path), r.writable] for r in plan.worker.rules]
    spec = {"rules": rules, "preopens": [["/host", "/", False]], "jobs": jobs}
    free = {"rules": None, "preopens": [["/host", "/", False]], "jobs": jobs[4:5]}
    # Two processes: wasmtime's I/O threads would carry the first thread's wall to the second.
    [walled] = scenario("wasmtime", [PROBE], [spec])
    [unconfined] = scenario("wasmtime", [PROBE], [free])
    assert walled == [
        "hello from the volume\n",
        "OK\nspooled",
        "read only\n",
        EACCES,
        *[EACCES] * 5,
        EACCES,
    ]
    assert unconfined == ["TOP SECRET\n"]  # the preopen alone would let the module out
    assert not (cache / "planted").exists()
    assert (ro / "fixed.txt").read_text() == "read only\n"
