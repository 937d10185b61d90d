"""Where a module's stderr goes: a file per route under the log dir, else the error log.

Every line is tagged with the route, so a shared log still says which module
wrote it. With ``json`` (``--log-format json``) each line is a JSON object whose
``message`` is the module's line, with the request's fields
(:mod:`wagi.logformat`), in the files too.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

logger = logging.getLogger("wagi.module")


class ModuleLog:
    def __init__(self, log_dir: Path | None, *, json: bool = False) -> None:
        self.log_dir = log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        self.formatter: logging.Formatter | None = None
        if json:
            from wagi.logformat import JsonFormatter

            self.formatter = JsonFormatter()

    def file_for(self, route: str) -> Path:
        assert self.log_dir is not None
        # /api/v1/... -> api_v1.stderr.log; /api and /api/... share a file (lines say which).
        base = route.removesuffix("/...").strip("/")
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", base) or "_root"
        return self.log_dir / f"{name}.stderr.log"

    def write(self, route: str, stderr: bytes) -> None:
        if not stderr:
            return
        lines = stderr.decode("utf-8", "replace").splitlines()
        if self.formatter is not None:
            self._write_json(route, lines)
            return
        if self.log_dir is None:
            for line in lines:
                logger.info("[%s] %s", route, line)
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with open(self.file_for(route), "a", encoding="utf-8") as out:
            out.writelines(f"{stamp} [{route}] {line}\n" for line in lines)

    def _write_json(self, route: str, lines: list[str]) -> None:
        if self.log_dir is None:
            for line in lines:
                logger.info("%s", line, extra={"route": route})
            return
        assert self.formatter is not None
        records = (
            logger.makeRecord(
                logger.name, logging.INFO, "", 0, line, (), None, extra={"route": route}
            )
            for line in lines
        )
        with open(self.file_for(route), "a", encoding="utf-8") as out:
            out.writelines(self.formatter.format(record) + "\n" for record in records)
