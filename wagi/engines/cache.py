"""An on-disk cache of compiled modules shared by every worker.

Compiling with cranelift is the expensive part of loading a module, and it
must never happen in the gunicorn master (a forked child of a process that
compiled hangs). Workers, and the start-up helper process, therefore compile
once and share the result through files keyed by the module's content hash,
the engine's name and the engine's version.

An artifact is native code that the engine maps and runs, and engines check
little of it when deserializing (wasmer's segfaults on a truncated file;
wasmtime checks only a header). Every entry therefore carries a SHA-256 of its
payload, checked on every read: a damaged entry is deleted and reported as a
miss, never handed to an engine. The cache directory must still be trusted: an
entry written with a valid checksum by someone else would be run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("wagi.cache")

_MAGIC = b"wagi-artifact-1\n"
_HEADER = len(_MAGIC) + 32


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactCache:
    """Compiled artifacts under ``directory``; ``None`` disables caching.

    ``on_lookup(engine, hit)`` is told the outcome of every :meth:`get` (for metrics):
    a miss means the engine compiles.
    """

    def __init__(
        self, directory: Path | None, on_lookup: Callable[[str, bool], None] | None = None
    ) -> None:
        self.directory = directory
        self._write_failed = False
        self.on_lookup = on_lookup

    def seal(self) -> None:
        """From now on neither read nor write (a confined worker cannot reach the cache)."""
        self.directory = None

    def _path(self, engine: str, version: str, digest: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{engine}-{version}" / f"{digest}.bin"

    def get(self, engine: str, version: str, digest: str) -> bytes | None:
        """The stored payload, or ``None`` if absent or damaged (a damaged entry is removed)."""
        payload = self._read(engine, version, digest)
        if self.on_lookup is not None:
            self.on_lookup(engine, payload is not None)
        return payload

    def _read(self, engine: str, version: str, digest: str) -> bytes | None:
        if self.directory is None:
            return None
        try:
            entry = self._path(engine, version, digest).read_bytes()
        except OSError:
            return None
        payload = entry[_HEADER:]
        if not entry.startswith(_MAGIC) or entry[len(_MAGIC) : _HEADER] != (
            hashlib.sha256(payload).digest()
        ):
            logger.warning(
                "damaged compiled artifact %s (checksum mismatch) discarded; compiling again",
                self._path(engine, version, digest),
            )
            self.discard(engine, version, digest)
            return None
        return payload

    def put(self, engine: str, version: str, digest: str, payload: bytes) -> None:
        """Store atomically, so a concurrent reader never sees half a file; never raises
        for a cache that cannot be written (it logs that once)."""
        if self.directory is None:
            return
        target = self._path(engine, version, digest)
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as out:
                out.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, target)
        except OSError as exc:
            if tmp is not None:  # a full disk: leave no half-written file behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            # A read-only or full cache, or a worker the kernel wall keeps out of it (a
            # module file recompiled after the wall went up), only costs speed, never
            # correctness: never raised, said once.
            if not self._write_failed:
                self._write_failed = True
                logger.warning(
                    "cache: cannot store compiled modules in %s (%s); every worker start "
                    "compiles again",
                    target.parent,
                    exc.strerror or exc,
                )

    def discard(self, engine: str, version: str, digest: str) -> None:
        """Forget an entry, e.g. one the engine refused to deserialize."""
        if self.directory is None:
            return
        with contextlib.suppress(OSError):
            self._path(engine, version, digest).unlink()
