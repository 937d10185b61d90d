"""Choosing and creating the WebAssembly engine.

Choosing only imports the engine's Python package and compares its
:class:`~wagi.engines.base.Capabilities` with what the configuration asks for;
it is safe in the gunicorn master. Creating an engine (which starts a
compiler) happens in workers only: a forked child of a process that compiled
with cranelift hangs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wagi.config import Config
from wagi.engines.base import Capabilities, Engine
from wagi.engines.cache import ArtifactCache

ENGINE_NAMES = ("wasmer", "wasmtime")
_CLASSES = {
    "wasmer": ("wagi.engines.wasmer_engine", "WasmerEngine"),
    "wasmtime": ("wagi.engines.wasmtime_engine", "WasmtimeEngine"),
}


class EngineUnavailable(Exception):
    """The chosen engine cannot run this configuration; the message says why."""


@dataclass(frozen=True)
class EngineChoice:
    name: str
    reason: str
    capabilities: Capabilities

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
            else "no volumes"
        )
        return f"{timeout}; {memory}; {volumes}"


def importable(name: str) -> tuple[bool, str]:
    """Whether engine ``name``'s Python package imports here, and if not, why."""
    package = {"wasmer": "wasmer", "wasmtime": "wasmtime"}[name]
    try:
        importlib.import_module(package)
        if name == "wasmer":
            importlib.import_module("wasmer_compiler_cranelift")
    except Exception as exc:  # the 3.11+ wasmer stub raises ImportError with a long message
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"the {package} package does not import here ({first_line})"
    return True, ""


def engine_class(name: str) -> type[Engine]:
    module_name, class_name = _CLASSES[name]
    cls: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    return cls


def refusals(name: str, config: Config, max_memory: int | None) -> list[str]:
    """What in ``config`` engine ``name`` cannot honour, one message per problem."""
    caps = engine_class(name).capabilities
    problems = []
    for entry in config.modules:
        where = f"{config.path}: [[module]] #{entry.index} (route {entry.route!r})"
        if entry.volumes and not caps.volumes:
            problems.append(
                f"{where}, key 'volumes': {name} does not confine a module to its volumes "
                "(absolute paths and symlinks reach any host file), so wagi maps no volumes "
                "with it; use the wasmtime engine"
            )
        elif any(v.read_only for v in entry.volumes) and not caps.read_only_volumes:
            problems.append(
                f"{where}, key 'volumes': {name} cannot make a volume read-only; "
                "use the wasmtime engine"
            )
        if (entry.max_memory or max_memory) and not caps.memory_limit:
            key = "max_memory" if entry.max_memory else "--max-memory"
            problems.append(
                f"{where}, {key!r}: {name} cannot limit a module's memory; "
                "use the wasmtime engine or drop the limit"
            )
    return problems


def choose_engine(requested: str, config: Config, max_memory: int | None) -> EngineChoice:
    """Pick the engine for ``config``: the requested one, or for ``auto`` the best that fits.

    Raises :class:`EngineUnavailable` when an explicitly requested engine cannot
    be imported or cannot honour every setting (it never silently ignores one).
    """
    if requested != "auto":
        ok, why = importable(requested)
        if not ok:
            raise EngineUnavailable(f"engine {requested!r} is not available: {why}")
        problems = refusals(requested, config, max_memory)
        if problems:
            raise EngineUnavailable(
                f"engine {requested!r} cannot honour this configuration:\n  "
                + "\n  ".join(problems)
            )
        cls = engine_class(requested)
        return EngineChoice(requested, "requested explicitly", cls.capabilities)
    ok, why = importable("wasmer")
    if ok:
        problems = refusals("wasmer", config, max_memory)
        if not problems:
            cls = engine_class("wasmer")
            return EngineChoice(
                "wasmer", "auto: wasmer imports and honours every setting", cls.capabilities
            )
        why = "wasmer cannot honour this configuration: " + problems[0]
    ok_wt, why_wt = importable("wasmtime")
    if not ok_wt:
        raise EngineUnavailable(f"no engine is available: {why}; {why_wt}")
    cls = engine_class("wasmtime")
    return EngineChoice("wasmtime", f"auto: {why}", cls.capabilities)


def create_engine(
    name: str, cache_dir: Path | None, on_lookup: Callable[[str, bool], None] | None = None
) -> Engine:
    """Instantiate engine ``name`` (in a worker or helper process, never in the master).

    ``on_lookup`` is told of each artifact-cache lookup (see :class:`ArtifactCache`).
    """
    cls = engine_class(name)
    return cls(cache=ArtifactCache(cache_dir, on_lookup))  # type: ignore[call-arg]
