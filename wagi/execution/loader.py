"""Compiled modules of one worker: compiled once, recompiled when the file changes.

A module file replaced on disk is picked up by the next request without a
restart: each lookup compares the file's identity (inode, size, mtime) with the
one it was compiled from, a single ``stat`` call. A module pulled from an OCI
registry is a content-addressed file in the cache (:mod:`wagi.config.sources`), which
never changes: only a reload (which pulls again) serves another version.

Hot reload keeps the last good module (docs/reliability.md). A version of the
file that does not load, or does not pass the checks start-up made (``check``:
its entrypoint exists, its imports are provided, its limits can be prepared),
is never served: its routes go on with the last version that did, the problem
is logged once for that version (path and what is wrong), and the file is not
compiled again until its identity changes again (a half-copied file that is
still being written changes its size or mtime, and is then tried again). A
file that was never good raises, as before, and its routes answer 500::

    loader = ModuleLoader(engine)
    module = loader.get(source, check)   # the newest good version, or EngineError/OSError
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wagi.config import ModuleSource
from wagi.engines.base import Engine, EngineError, LoadedModule

logger = logging.getLogger("wagi")

Identity = tuple[int, int, int]
"""What tells one version of a file from the next: inode, size, mtime (ns)."""

_MISSING: Identity = (-1, -1, -1)
"""The identity of a file that is not there (mid-replacement, or removed)."""


@dataclass
class _Versions:
    """What the loader knows of one module file."""

    good: tuple[Identity, LoadedModule] | None = None
    """The last version that loaded and passed the checks: the one served."""
    bad: Identity | None = None
    """The last version that did not, so it is neither compiled nor logged again."""
    problem: Exception | None = None
    """Why ``bad`` is bad, raised again while no good version exists."""


class ModuleLoader:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._files: dict[Path, _Versions] = {}
        # A threaded worker may look up from several threads: one load of a version at a time.
        self._lock = threading.Lock()

    def get(
        self, source: ModuleSource, check: Callable[[LoadedModule], None] | None = None
    ) -> LoadedModule:
        """The compiled module for ``source``: its newest version that loads and passes ``check``.

        ``check`` runs on a version loaded now (not on one already loaded) and raises
        EngineError if that version cannot be served. Raises EngineError or OSError only
        when no version of the file was ever good.
        """
        path = source.path
        if path is None:
            raise EngineError(f"{source} has not been pulled (wagi check pulls it at start-up)")
        identity = _identity(path)
        versions = self._files.get(path)
        if versions is not None:  # the common case, without the lock: one stat, one lookup
            known = self._known(versions, identity)
            if known is not None:
                return known
        with self._lock:
            versions = self._files.setdefault(path, _Versions())
            known = self._known(versions, identity)
            if known is not None:  # another thread loaded it meanwhile
                return known
            return self._load(path, versions, identity, check)

    @staticmethod
    def _known(versions: _Versions, identity: Identity) -> LoadedModule | None:
        """What to answer for a version already tried; ``None`` if it is new."""
        if versions.good is not None and versions.good[0] == identity:
            return versions.good[1]
        if versions.bad == identity:
            if versions.good is not None:
                return versions.good[1]
            assert versions.problem is not None
            raise versions.problem
        return None

    def _load(
        self,
        path: Path,
        versions: _Versions,
        identity: Identity,
        check: Callable[[LoadedModule], None] | None,
    ) -> LoadedModule:
        try:
            if identity == _MISSING:
                os.stat(path)  # raises the OSError that says why
            module = self.engine.load(path)
            if check is not None:
                check(module)
        except (EngineError, OSError) as exc:
            versions.bad, versions.problem = identity, exc
            if versions.good is None:
                raise
            logger.error(
                "%s: this version of the module file cannot be served (%s); its routes keep "
                "serving the last version that could, until the file changes again",
                path,
                _reason(exc, path),
            )
            return versions.good[1]
        if versions.good is not None:
            logger.info("%s: a new version of the module file is served", path)
        versions.good, versions.bad, versions.problem = (identity, module), None, None
        return module


def _identity(path: Path) -> Identity:
    try:
        st = os.stat(path)
    except OSError:
        return _MISSING
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _reason(exc: Exception, path: Path) -> str:
    """What is wrong, without the path the log line already names."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).removeprefix(f"{path}: ")
