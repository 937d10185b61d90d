"""The WebAssembly engines: which ones import here, and creating one.

This package says what each engine *can* do (its
:class:`~wagi.engines.base.Capabilities`); whether a given configuration may run
on it is decided above it, in :mod:`wagi.policy`. Asking :func:`importable` or
:func:`engine_class` only imports Python packages and is safe in the gunicorn
master. Creating an engine (which starts a compiler) happens in workers only: a
forked child of a process that compiled with cranelift hangs.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from pathlib import Path

from wagi.engines.base import Engine
from wagi.engines.cache import ArtifactCache

ENGINE_NAMES = ("wasmer", "wasmtime")
_CLASSES = {
    "wasmer": ("wagi.engines.wasmer_engine", "WasmerEngine"),
    "wasmtime": ("wagi.engines.wasmtime_engine", "WasmtimeEngine"),
}
_PACKAGES = {
    # The compiler is a separate wheel; both must import.
    "wasmer": ("wasmer", "wasmer_compiler_cranelift"),
    "wasmtime": ("wasmtime",),
}
_HINTS = {
    "wasmer": "wasmer-python 1.1.0 has native wheels for CPython 3.7-3.10 only; "
    "both wasmer and wasmer-compiler-cranelift are needed",
}


def importable(name: str) -> tuple[bool, str]:
    """Whether engine ``name``'s Python packages import here, and if not, why.

    Importing is the only honest test: on CPython 3.11+ pip installs a stub
    ``wasmer`` that raises ImportError with a long message.
    """
    for package in _PACKAGES[name]:
        try:
            importlib.import_module(package)
        except Exception as exc:  # a broken native module must not take wagi down
            text = str(exc).strip()
            first_line = text.splitlines()[0] if text else type(exc).__name__
            hint = f"; {_HINTS[name]}" if name in _HINTS else ""
            return False, (
                f"the {package} package does not import here "
                f"(Python {platform.python_version()}: {first_line}{hint})"
            )
    return True, ""


def engine_class(name: str) -> type[Engine]:
    module_name, class_name = _CLASSES[name]
    cls: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    return cls


def create_engine(
    name: str, cache_dir: Path | None, on_lookup: Callable[[str, bool], None] | None = None
) -> Engine:
    """Instantiate engine ``name`` (in a worker or helper process, never in the master).

    ``on_lookup`` is told of each artifact-cache lookup (see :class:`ArtifactCache`).
    """
    cls = engine_class(name)
    return cls(cache=ArtifactCache(cache_dir, on_lookup))  # type: ignore[call-arg]
