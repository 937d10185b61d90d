"""The WebAssembly engines: which ones import here, and creating one.

This package says what each engine *can* do (its
:class:`~wagi.engines.base.Capabilities`); whether a given configuration may run
on it is decided above it, in :mod:`wagi.execution.engine_choice`. Asking :func:`importable` or
:func:`engine_class` only imports Python packages and is safe in the gunicorn
master. Creating an engine (which starts a compiler) happens in workers only: a
forked child of a process that compiled with cranelift hangs.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from wagi.engines.base import Engine
from wagi.engines.cache import ArtifactCache


class EngineName(str, Enum):
    """The engines wagi knows. A ``str``: it compares, formats and prints as its name."""

    WASMER = "wasmer"
    WASMTIME = "wasmtime"

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class EngineSpec:
    """What wagi needs to know of an engine before importing it."""

    name: EngineName
    module: str
    """The module that holds its :class:`~wagi.engines.base.Engine` class, ``class_name``."""
    class_name: str
    packages: tuple[str, ...]
    """The Python packages that must import for it to run."""
    install_hint: str | None = None
    """Added to the message when one of them does not import."""


ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec(
        EngineName.WASMER,
        "wagi.engines.wasmer",
        "WasmerEngine",
        # The compiler is a separate wheel; both must import.
        ("wasmer", "wasmer_compiler_cranelift"),
        "wasmer-python 1.1.0 has native wheels for CPython 3.7-3.10 only; "
        "both wasmer and wasmer-compiler-cranelift are needed",
    ),
    EngineSpec(
        EngineName.WASMTIME, "wagi.engines.wasmtime.engine", "WasmtimeEngine", ("wasmtime",)
    ),
)
"""Every engine, in the order ``--engine auto`` prefers them: auto takes the first that
imports and honours the whole configuration, else the last (which honours every setting)."""

ENGINE_NAMES: tuple[str, ...] = tuple(spec.name.value for spec in ENGINES)
"""The engines' names, in ``auto``'s order of preference."""

_SPECS = {spec.name.value: spec for spec in ENGINES}


def spec(name: str) -> EngineSpec:
    """The table's row for engine ``name`` (KeyError for a name it does not hold)."""
    return _SPECS[name]


def importable(name: str) -> tuple[bool, str]:
    """Whether engine ``name``'s Python packages import here, and if not, why.

    Importing is the only honest test: on CPython 3.11+ pip installs a stub
    ``wasmer`` that raises ImportError with a long message.
    """
    row = spec(name)
    for package in row.packages:
        try:
            importlib.import_module(package)
        except Exception as exc:  # a broken native module must not take wagi down
            text = str(exc).strip()
            first_line = text.splitlines()[0] if text else type(exc).__name__
            hint = f"; {row.install_hint}" if row.install_hint else ""
            return False, (
                f"the {package} package does not import here "
                f"(Python {platform.python_version()}: {first_line}{hint})"
            )
    return True, ""


def engine_class(name: str) -> type[Engine]:
    row = spec(name)
    cls: type[Engine] = getattr(importlib.import_module(row.module), row.class_name)
    return cls


def create_engine(
    name: str, cache_dir: Path | None, on_lookup: Callable[[str, bool], None] | None = None
) -> Engine:
    """Instantiate engine ``name`` (in a worker or helper process, never in the master).

    ``on_lookup`` is told of each artifact-cache lookup (see :class:`ArtifactCache`).
    """
    cls = engine_class(name)
    return cls(cache=ArtifactCache(cache_dir, on_lookup))
