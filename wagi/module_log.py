"""Where a module's stderr goes: a file per route under the log dir, else the error log.

Every line is tagged with the route, so a shared log still says which module
wrote it.

Logging never fails a request: a log dir removed while serving (a cleanup, a
rotation) is made again; one that cannot be written (disk full, replaced by a
file) sends the lines to the error log instead, with one warning when that
starts and one note when the files work again.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

logger = logging.getLogger("wagi.module")


class ModuleLog:
    def __init__(self, log_dir: Path | None) -> None:
        self.log_dir = log_dir
        self.failing = False
        """Whether the last write to the log dir failed (its lines went to the error log)."""
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def file_for(self, route: str) -> Path:
        assert self.log_dir is not None
        # /api/v1/... -> api_v1.stderr.log; /api and /api/... share a file (lines say which).
        base = route.removesuffix("/...").strip("/")
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", base) or "_root"
        return self.log_dir / f"{name}.stderr.log"

    def write(self, route: str, stderr: bytes) -> None:
        """Log ``stderr`` for ``route``; never raises for a log that cannot be written."""
        if not stderr:
            return
        lines = stderr.decode("utf-8", "replace").splitlines()
        if self.log_dir is None:
            for line in lines:
                logger.info("[%s] %s", route, line)
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        text = "".join(f"{stamp} [{route}] {line}\n" for line in lines)
        path = self.file_for(route)
        try:
            self._append(path, text)
        except OSError as exc:
            if not self.failing:
                self.failing = True
                logger.warning(
                    "cannot write module stderr to %s (%s): it goes to this log until the "
                    "log dir works again",
                    path,
                    exc.strerror or exc,
                )
            for line in lines:
                logger.info("[%s] %s", route, line)
            return
        if self.failing:
            self.failing = False
            logger.warning("module stderr goes to %s again", self.log_dir)

    def _append(self, path: Path, text: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as out:
                out.write(text)
        except FileNotFoundError:  # the log dir was removed while serving: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as out:
                out.write(text)
