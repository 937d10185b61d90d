"""The kernel wall around the code that runs modules: planned once, from the configuration.

The WebAssembly sandbox is the first wall around a module; Linux Landlock
(:mod:`wagi.execution.landlock`) is the second, below it. This module decides what the
code that runs modules may reach on the host, from ``modules.toml`` and what
the engine says of itself (:class:`~wagi.engines.base.Capabilities`):

- An engine whose file I/O runs on **process-wide helper threads**
  (``shared_io_threads``, wasmtime): those threads carry the confinement of the
  thread that made them, whichever route that was. A wall per route cannot hold
  there, so the **whole worker** is confined once it is prepared, and runs
  modules on the thread that serves the request: one wall with the volumes of
  all routes (a path read-write in one route is read-write) and what the worker
  itself still needs (:class:`WorkerNeeds`). Inside one process a wall on a few
  threads keeps out little more (threads share memory and file descriptors: a
  module that escaped the sandbox could act through the serving thread); see
  docs/security.md. Keeping each route to its own volumes stays the engine's
  job, which wasmtime does in the kernel too (``openat2`` with
  ``RESOLVE_BENEATH``). A process that must stay unconfined (``wagi run``,
  ``wagi check``) runs modules on runner threads behind the same wall.
- An engine that **does not confine volumes** itself (wasmer): each
  ``[[module]]`` with volumes runs on threads of its own, confined to that
  route's volumes (:mod:`wagi.execution.sites`). Without the wall, such an engine maps
  no volumes at all (:mod:`wagi.execution.engine_choice` refuses them).

Besides volumes a confined thread reaches only what a run needs:

- this worker's folder of transient files (:func:`wagi.execution.scratch.worker_folder`),
  read-write: spooled request bodies, scratch directories (``tmp``);
- for routes with outbound HTTP: the resolver's files, read-only, and TCP
  connections (denied otherwise). TLS trust is loaded before the wall goes up.

and, for a whole confined worker, what the worker itself still needs after it is
prepared: read-only, the Python installation (code it may still import) and the
module files (so a replaced file is picked up); read-write, the log directory of
module stderr and the metrics directory. Never the compiled-artifact cache (native
code other workers load), never ``modules.toml``, an env file, a TLS key or any other
file: a folder that holds one of those is never granted whole (a module file there is
granted alone).

``--kernel-wall`` chooses: ``auto`` (up wherever the kernel has Landlock),
``required`` (refuse to start without it) or ``off``::

    plan = plan_walls(engine.capabilities, config, settings)
    print(plan.describe())
    report = plan.worker.raise_here()   # on a thread that will run modules
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wagi.config import Config, LocalModule, ModuleEntry
from wagi.config.settings import ServerSettings
from wagi.engines.base import Capabilities
from wagi.execution import landlock, scratch
from wagi.execution.landlock import Availability, PathRule

logger = logging.getLogger("wagi")

RESOLVER_FILES = (
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
)
"""What glibc's ``getaddrinfo`` opens (its files and dns services are built into libc)."""


class WallRefused(Exception):
    """The configuration asks for something the wall exists to prevent; the message says what."""


def availability(setting: str) -> Availability:
    """Whether the wall can go up here, given ``--kernel-wall``."""
    if setting == "off":
        return Availability(False, 0, "it is turned off (--kernel-wall off)")
    return landlock.availability()


@dataclass(frozen=True)
class Wall:
    """What a confined thread may reach: paths, and TCP connections unless denied."""

    rules: tuple[PathRule, ...]
    deny_network: bool
    outbound_http: bool = False
    """Runs make outbound HTTP requests: the connection pool and its TLS trust are made
    before the wall goes up."""
    transient: Path | None = None
    """The worker's folder of transient files, one of the rules."""
    code: tuple[Path, ...] = ()
    """The Python installation's folders among the rules (read-only)."""

    def describe(self, available: Availability | None = None) -> str:
        """What the wall grants, the same in every process (``wagi check`` and its workers)
        and on every installation (the Python folders are named as one)."""
        shown = [
            PathRule(self.transient.parent / "w<pid>", r.writable)
            if r.path == self.transient
            else r
            for r in self.rules
            if r.path not in self.code
        ]
        if self.code:
            shown.append(PathRule(Path("<the Python installation: sys.path and wagi>")))
        return landlock.describe(shown, deny_network=self.deny_network, available=available)

    def raise_here(self) -> landlock.Report:
        """Confine the calling thread (and the threads it makes) for good.

        A volume that no longer exists is left out, with an error in the log: its route
        fails (as it would without the wall) and every other route goes on. Raises
        :class:`~wagi.execution.landlock.WallError`, confining nothing, if it cannot confine.
        """
        _import_what_runs_need(self.outbound_http)
        rules = [r for r in self.rules if r.path == self.transient or os.path.exists(r.path)]
        if len(rules) < len(self.rules):
            logger.error(
                "the kernel wall leaves out what no longer exists: %s; runs that need it fail "
                "until it exists again and the workers are reloaded (SIGHUP)",
                ", ".join(str(r.path) for r in self.rules if r not in rules),
            )
        return landlock.restrict_current_thread(rules, deny_network=self.deny_network)


def _import_what_runs_need(outbound_http: bool) -> None:
    # Imported lazily elsewhere, first used on a runner thread: after the wall, too late.
    import encodings.idna  # noqa: F401  (socket encodes host names with it)

    if outbound_http:
        from wagi.outbound.client import worker_client

        worker_client()  # its TLS context reads the trust store now


@dataclass(frozen=True)
class WorkerNeeds:
    """What a confined worker itself must still reach, beside what its modules need."""

    code: tuple[Path, ...] = ()
    """Read-only: the Python installation and packages it may still import from."""
    modules: tuple[Path, ...] = ()
    """Read-only: module files, or their folders where nothing secret lives there."""
    writable: tuple[Path, ...] = ()
    """Read-write: where logs and metrics still create files."""

    @classmethod
    def of(
        cls, settings: ServerSettings, config: Config, secrets: Iterable[Path] = ()
    ) -> WorkerNeeds:
        """Planned from the settings and ``modules.toml``; nothing in ``secrets`` (nor the
        configuration, the env file or the artifact cache) is ever granted."""
        never = [config.path, *secrets]
        if settings.env_file is not None:
            never.append(settings.env_file)
        if settings.cache_dir is not None:
            never.append(settings.cache_dir)
        hidden = [Path(os.path.abspath(p)) for p in never]

        def safe(folder: Path) -> bool:
            return not any(p == folder or p.is_relative_to(folder) for p in hidden)

        code: list[Path] = []
        for path in _python_code_folders():
            folder = Path(os.path.abspath(path))
            if folder.is_dir() and safe(folder) and folder not in code:
                code.append(folder)
        modules: list[Path] = []
        for entry in config.modules:
            if not isinstance(entry.module, LocalModule):
                continue  # pulled into the cache by digest: it never changes
            file = Path(os.path.abspath(entry.module.path))
            folder = file.parent
            granted = folder if safe(folder) else file
            if granted not in modules:
                modules.append(granted)
        writable: list[Path] = []
        if settings.log_dir is not None:
            writable.append(Path(os.path.abspath(settings.log_dir)))
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if metrics_dir and settings.metrics_bind:
            writable.append(Path(os.path.abspath(metrics_dir)))
        return cls(tuple(code), tuple(modules), tuple(writable))

    def rules(self) -> list[PathRule]:
        return [
            *(PathRule(p, True) for p in self.writable),
            *(PathRule(p) for p in self.code),
            *(PathRule(p) for p in self.modules),
        ]


def _python_code_folders() -> list[Path]:
    """Where this Python may still import from: its standard library, its site-packages and
    wagi's own package. Not every ``sys.path`` entry: ``python -m gunicorn`` puts the working
    directory there, which may be a home directory or hold anything."""
    import site
    import sysconfig

    import wagi

    paths = sysconfig.get_paths()
    folders = [Path(wagi.__file__).parent]
    folders += [Path(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    folders += [Path(p) for p in site.getsitepackages()]
    folders += [
        Path(p)
        for p in sys.path
        if p and Path(p).name in ("site-packages", "dist-packages", "lib-dynload")
    ]
    return folders


@dataclass(frozen=True)
class WallPlan:
    """Where the wall stands in one worker."""

    available: Availability
    worker: Wall | None = None
    """The wall of the whole worker (an engine with shared I/O threads), raised around the
    serving thread once the worker is prepared, or around runner threads in a process
    that stays unconfined."""
    routes: Mapping[int, Wall] = field(default_factory=dict)
    """Walls of the ``[[module]]`` entries (by index) that run on threads of their own."""

    def describe(self, config: Config) -> list[str]:
        """Lines for ``wagi check`` and the start-up log."""
        if self.worker is not None:
            return [f"kernel wall for the worker: {self.worker.describe(self.available)}"]
        lines = [
            f"kernel wall for {entry.route}: {self.routes[entry.index].describe(self.available)}"
            for entry in config.modules
            if entry.index in self.routes
        ]
        if not self.available.ok:
            lines.append(f"no kernel wall: {self.available.why}")
        return lines


def plan_walls(
    capabilities: Capabilities,
    config: Config,
    setting: str,
    cache_dir: Path | None,
    transient: Path | None = None,
    worker: WorkerNeeds | None = None,
) -> WallPlan:
    """The walls of a worker whose engine has ``capabilities``.

    ``transient`` is the worker's folder of transient files (by default
    :func:`wagi.execution.scratch.worker_folder`, made now); ``worker`` what a whole confined
    worker itself still needs (granted only where the whole worker is confined). Raises
    :class:`WallRefused` when ``--kernel-wall required`` meets a kernel without Landlock,
    or a volume would let modules write the artifact cache.
    """
    available = availability(setting)
    if setting == "required" and not available.ok:
        raise WallRefused(f"--kernel-wall required: the kernel wall cannot go up: {available.why}")
    _refuse_volumes_over_the_cache(config, cache_dir)
    if not available.ok:
        return WallPlan(available)
    if transient is None:
        transient = scratch.worker_folder()
    if capabilities.shared_io_threads:
        extra = worker.rules() if worker is not None else []
        wall = _wall(config.modules, transient, extra)
        if worker is not None:
            wall = dataclasses.replace(
                wall,
                code=tuple(
                    p for p in worker.code if p not in {r.path for r in wall.rules if r.writable}
                ),
            )
        return WallPlan(available, worker=wall)
    if capabilities.volumes:
        return WallPlan(available)  # the engine confines volumes; runs stay where they are
    walled = {e.index: _wall([e], transient) for e in config.modules if e.volumes}
    return WallPlan(available, routes=walled)


def _wall(entries: Iterable[ModuleEntry], transient: Path, extra: Iterable[PathRule] = ()) -> Wall:
    entries = list(entries)
    access: dict[Path, bool] = {transient: True}
    for rule in extra:
        access[rule.path] = access.get(rule.path, False) or rule.writable
    for entry in entries:
        for volume in entry.volumes:
            access[volume.host_path] = access.get(volume.host_path, False) or not volume.read_only
    outbound = any(entry.allowed_hosts for entry in entries)
    if outbound:
        for name in RESOLVER_FILES:
            if Path(name).exists():
                access.setdefault(Path(name), False)
    rules = tuple(PathRule(path, writable) for path, writable in access.items())
    return Wall(rules, deny_network=not outbound, outbound_http=outbound, transient=transient)


def _refuse_volumes_over_the_cache(config: Config, cache_dir: Path | None) -> None:
    if cache_dir is None:
        return
    cache = cache_dir.resolve()
    for entry in config.modules:
        for volume in entry.volumes:
            host = volume.host_path.resolve()
            if not volume.read_only and cache.is_relative_to(host):
                raise WallRefused(
                    f"{config.path}: {entry.label}, key 'volumes': {volume.host_path} holds the "
                    f"compiled-artifact cache ({cache_dir}), native code every worker loads; no "
                    "module may write it: choose another --cache-dir, or make the volume read-only"
                )
