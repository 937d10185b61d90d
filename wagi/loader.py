"""Compiled modules of one worker: compiled once, recompiled when the file changes.

A module file replaced on disk is picked up by the next request without a
restart: each lookup compares the file's identity (inode, size, mtime) with the
one it was compiled from, a single ``stat`` call. A module pulled from an OCI
registry is a content-addressed file in the cache (:mod:`wagi.sources`), which
never changes: only a reload (which pulls again) serves another version.

A module loaded again must pass the checks start-up made (``check``: its
entrypoint exists, its imports are provided, its limits can be prepared) before
it is served; until it does, its route answers 500 and the log says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from wagi.config import ModuleSource
from wagi.engines.base import Engine, EngineError, LoadedModule


class ModuleLoader:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._modules: dict[Path, tuple[tuple[int, int, int], LoadedModule]] = {}

    def get(
        self, source: ModuleSource, check: Callable[[LoadedModule], None] | None = None
    ) -> LoadedModule:
        """The compiled module for ``source``; raises EngineError or OSError if it cannot load.

        ``check`` runs on a module loaded now (not on one already loaded) and raises
        EngineError if it cannot be served; it is then not kept.
        """
        path = source.path
        if path is None:
            raise EngineError(f"{source} has not been pulled (wagi check pulls it at start-up)")
        st = os.stat(path)
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._modules.get(path)
        if cached is not None and cached[0] == identity:
            return cached[1]
        module = self.engine.load(path)
        if check is not None:
            check(module)
        self._modules[path] = (identity, module)
        return module
