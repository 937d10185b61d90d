"""Where a module's stderr goes: a file per route under the log dir, else the error log.

Every line is tagged with the route, so a shared log still says which module
wrote it. Logging never fails a request: when a file under the log dir cannot be
written (the directory was removed, the disk is full), the lines go to the error
log instead, and the error log says so once per worker (and once more each time
the files recover and fail again).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

from wagi.routing import route_base

logger = logging.getLogger("wagi.module")


class ModuleLog:
    def __init__(self, log_dir: Path | None) -> None:
        self.log_dir = log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        self._failing = False
        self._lock = threading.Lock()

    def file_for(self, route: str) -> Path:
        assert self.log_dir is not None
        # /api/v1/... -> api_v1.stderr.log; /api and /api/... share a file (lines say which).
        base = route_base(route).strip("/")
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", base) or "_root"
        return self.log_dir / f"{name}.stderr.log"

    def write(self, route: str, stderr: bytes) -> None:
        if not stderr:
            return
        lines = stderr.decode("utf-8", "replace").splitlines()
        if self.log_dir is None:
            self._to_error_log(route, lines)
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        path = self.file_for(route)
        try:
            with open(path, "a", encoding="utf-8") as out:
                out.writelines(f"{stamp} [{route}] {line}\n" for line in lines)
        except OSError as exc:
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                logger.error(
                    "wagi: cannot write module stderr to %s (%s); it goes to this log until "
                    "the log dir works again",
                    path,
                    exc.strerror or exc,
                )
            self._to_error_log(route, lines)
            return
        if self._failing:
            with self._lock:
                self._failing = False
            logger.warning("wagi: module stderr goes to %s again", self.log_dir)

    @staticmethod
    def _to_error_log(route: str, lines: list[str]) -> None:
        for line in lines:
            logger.info("[%s] %s", route, line)
