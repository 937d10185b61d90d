"""An on-disk cache of compiled modules shared by every worker.

Compiling with cranelift is the expensive part of loading a module, and it
must never happen in the gunicorn master (a forked child of a process that
compiled hangs). Workers, and the start-up helper process, therefore compile
once and share the result through files keyed by the module's content hash,
the engine's name and the engine's version.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactCache:
    """Compiled artifacts under ``directory``; ``None`` disables caching."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _path(self, engine: str, version: str, digest: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{engine}-{version}" / f"{digest}.bin"

    def get(self, engine: str, version: str, digest: str) -> bytes | None:
        if self.directory is None:
            return None
        try:
            return self._path(engine, version, digest).read_bytes()
        except OSError:
            return None

    def put(self, engine: str, version: str, digest: str, artifact: bytes) -> None:
        """Store atomically, so a concurrent reader never sees half a file."""
        if self.directory is None:
            return
        target = self._path(engine, version, digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as out:
                out.write(artifact)
            os.replace(tmp, target)
        except OSError:
            # A read-only or full cache only costs speed, never correctness.
            pass

    def discard(self, engine: str, version: str, digest: str) -> None:
        """Forget an artifact that failed to deserialize."""
        if self.directory is None:
            return
        with contextlib.suppress(OSError):
            self._path(engine, version, digest).unlink()
