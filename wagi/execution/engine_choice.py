"""Whether a configuration may run on an engine, and under which gunicorn workers.

Capabilities below, policy above: an engine states what it can enforce
(:class:`~wagi.engines.base.Capabilities`); this module holds that against
``modules.toml``, the server options and gunicorn's worker settings, chooses the
engine for ``--engine auto``, and says in the user's terms why a combination
cannot run. It imports engine packages but creates no engine, so it is safe in
the gunicorn master.

Example::

    choice = choose_engine("auto", config, max_memory=None)
    problem = worker_problem(choice, worker_class="gthread", threads=4)
"""

from __future__ import annotations

from dataclasses import dataclass

from wagi.config import Config, LocalModule, ModuleEntry
from wagi.engines import ENGINE_NAMES, engine_class, importable
from wagi.engines.base import Capabilities, file_is_component
from wagi.execution import wall

_FALLBACK = ENGINE_NAMES[-1]
"""The engine ``--engine auto`` falls back to, which honours every setting: the one a
refusal suggests."""


class EngineUnavailable(Exception):
    """The chosen engine cannot run this configuration; the message says why."""


@dataclass(frozen=True)
class EngineChoice:
    """The engine a server runs, why it was chosen, and what it can enforce."""

    name: str
    reason: str
    capabilities: Capabilities
    kernel_wall: str = "auto"
    """``--kernel-wall``: whether volumes the engine does not confine can be served."""

    def describe_limits(self) -> str:
        caps = self.capabilities
        timeout = (
            "timeouts interrupt the module"
            if caps.interruptible
            else "timeouts answer 504 and replace the worker (the module cannot be interrupted)"
        )
        memory = "memory limits enforced" if caps.memory_limit else "no memory limits"
        volumes = (
            ("read-write and read-only volumes" if caps.read_only_volumes else "read-write volumes")
            if caps.volumes
            else (
                "read-write volumes behind the kernel wall (the engine does not confine them)"
                if wall.availability(self.kernel_wall).ok
                else "no volumes"
            )
        )
        return f"{timeout}; {memory}; {volumes}"


def refusals(
    name: str, config: Config, max_memory: int | None, kernel_wall: str = "auto"
) -> list[str]:
    """What in ``config`` engine ``name`` cannot honour, one message per problem.

    ``kernel_wall`` is ``--kernel-wall``: an engine that does not confine volumes serves
    them only behind the wall (:mod:`wagi.execution.wall`).
    """
    caps = engine_class(name).capabilities
    problems = []
    for entry in config.modules:
        where = f"{config.path}: {entry.label}"
        if not caps.components and _is_component(entry):
            problems.append(
                f"{where}, key 'module': {entry.module} is a WebAssembly component (WASI 0.2); "
                f"{name} runs core modules only; use the wasmtime engine"
            )
            continue  # the one thing to say about this entry
        if entry.volumes and not caps.volumes:
            available = wall.availability(kernel_wall)
            if not available.ok:
                problems.append(
                    f"{where}, key 'volumes': {name} does not confine a module to its volumes "
                    "(absolute paths and symlinks reach any host file) and the kernel wall is "
                    f"not available ({available.why}), so wagi maps no volumes with it; use the "
                    f"{_FALLBACK} engine"
                )
            elif any(v.read_only for v in entry.volumes):
                problems.append(
                    f"{where}, key 'volumes': {name} opens every file read-write, so behind "
                    "the kernel wall a read-only volume could not even be read; use the "
                    f"{_FALLBACK} engine or make the volume read-write"
                )
        elif any(v.read_only for v in entry.volumes) and not caps.read_only_volumes:
            problems.append(
                f"{where}, key 'volumes': {name} cannot make a volume read-only; "
                f"use the {_FALLBACK} engine"
            )
        if entry.tmp and not (caps.volumes and caps.write_budget):
            problems.append(
                f"{where}, key 'tmp': {name} cannot "
                + (
                    "bound what a module writes to files"
                    if caps.volumes
                    else "confine a module to a directory (absolute paths and symlinks reach "
                    "any host file)"
                )
                + f", so it gives modules no scratch directory; use the {_FALLBACK} engine"
            )
        if (entry.allowed_hosts or entry.http_max_concurrency) and not caps.outbound_http:
            key = "allowed_hosts" if entry.allowed_hosts else "http_max_concurrency"
            problems.append(
                f"{where}, key {key!r}: {name} cannot give modules outbound HTTP; "
                f"use the {_FALLBACK} engine"
            )
        if (entry.max_memory or max_memory) and not caps.memory_limit:
            key = "max_memory" if entry.max_memory else "--max-memory"
            problems.append(
                f"{where}, {key!r}: {name} cannot limit a module's memory; "
                f"use the {_FALLBACK} engine or drop the limit"
            )
    return problems


def _is_component(entry: ModuleEntry) -> bool:
    """Whether the entry's module file is a component (an OCI module is known once pulled:
    the engine's load says it then)."""
    module = entry.module
    return isinstance(module, LocalModule) and file_is_component(module.path)


def choose_engine(
    requested: str, config: Config, max_memory: int | None, kernel_wall: str = "auto"
) -> EngineChoice:
    """Pick the engine for ``config``: the requested one, or for ``auto`` the best that fits.

    Raises :class:`EngineUnavailable` when an explicitly requested engine cannot
    be imported or cannot honour every setting (it never silently ignores one).
    """
    requested = str(requested)  # settings give an EngineName, whose repr is not its name
    if requested != "auto":
        ok, why = importable(requested)
        if not ok:
            raise EngineUnavailable(f"engine {requested!r} is not available: {why}")
        problems = refusals(requested, config, max_memory, kernel_wall)
        if problems:
            raise EngineUnavailable(
                f"engine {requested!r} cannot honour this configuration:\n  "
                + "\n  ".join(problems)
            )
        cls = engine_class(requested)
        return EngineChoice(requested, "requested explicitly", cls.capabilities, kernel_wall)
    # The engines in auto's order of preference: the first that imports and honours every
    # setting, else the last, which honours them all.
    *preferred, fallback = ENGINE_NAMES
    reasons = []
    for name in preferred:
        ok, why = importable(name)
        if ok:
            problems = refusals(name, config, max_memory, kernel_wall)
            if not problems:
                return EngineChoice(
                    name,
                    f"auto: {name} imports and honours every setting",
                    engine_class(name).capabilities,
                    kernel_wall,
                )
            why = f"{name} cannot honour this configuration: " + problems[0]
        reasons.append(why)
    why = "; ".join(reasons)
    ok, why_fallback = importable(fallback)
    if not ok:
        raise EngineUnavailable(f"no engine is available: {why}; {why_fallback}")
    cls = engine_class(fallback)
    return EngineChoice(fallback, f"auto: {why}", cls.capabilities, kernel_wall)


def worker_kind(worker_class: str) -> str | None:
    """gunicorn's worker class as ``"sync"`` or ``"gthread"``; None for any other.

    ``worker_class`` is gunicorn's ``cfg.worker_class_str``, which already says
    ``gthread`` for the sync worker with ``--threads`` above 1.
    """
    name = worker_class.rsplit("#", 1)[-1].rsplit(".", 1)[-1].lower()
    return _WORKER_KINDS.get(name)


_WORKER_KINDS = {
    "sync": "sync",
    "syncworker": "sync",
    "gthread": "gthread",
    "threadworker": "gthread",
}


def worker_problem(choice: EngineChoice, worker_class: str, threads: int) -> str | None:
    """Why gunicorn's ``worker_class`` and ``threads`` cannot serve ``choice``, or None.

    wagi runs modules under gunicorn's sync worker (one request at a time per process,
    on the thread that built the engine) or its gthread worker (requests on a pool of
    threads, so only an engine whose :attr:`~Capabilities.thread_safe` is true). Other
    worker classes (gevent, eventlet, tornado, ...) are refused: a module run blocks
    their event loop, and green threads never let wagi's timeouts fire.
    """
    kind = worker_kind(worker_class)
    if kind == "sync" and threads > 1:
        kind = "gthread"  # what gunicorn runs for the sync worker with --threads above 1
    if kind is None:
        return (
            f"gunicorn's worker class {worker_class!r} cannot run modules: wagi runs under "
            "the sync worker (the default) or gthread (--threads N)"
        )
    if kind == "gthread" and not choice.capabilities.thread_safe:
        return (
            f"engine {choice.name!r} ({choice.reason}) cannot serve gunicorn's gthread worker "
            f"(--worker-class {worker_class}, --threads {threads}): its objects may only be used "
            "on the thread that created them, and gthread serves requests on other threads; "
            f"use the sync worker with --threads 1, or --engine {_FALLBACK}"
        )
    return None
