"""Where a module's stderr goes: a file per route under the log dir, else the error log.

Every line is tagged with the route, so a shared log still says which module
wrote it. With ``json`` (``--log-format json``) each line is a JSON object whose
``message`` is the module's line, with the request's fields
(:mod:`wagi.observability.logformat`), in the files too.

Logging never fails a request: a log dir removed while serving (a cleanup, a
rotation) is made again; one that cannot be written (disk full, replaced by a
file) sends the lines to the error log instead, with one warning when that
starts and one note when the files work again. A worker confined by the kernel
wall (:mod:`wagi.execution.wall`) reaches only the log dir it started with: one removed
and made again is a new directory outside its wall, so the lines go to the error
log until the workers are replaced (a reload, ``SIGHUP``), and the warning says so.
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
        self.failing = False
        """Whether the last write to the log dir failed (its lines went to the error log)."""
        self.confined = False
        """This worker is confined: it cannot make the log dir again, nor reach a new one."""
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        self.formatter: logging.Formatter | None = None
        if json:
            from wagi.observability.logformat import JsonFormatter

            self.formatter = JsonFormatter()

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
            self._to_error_log(route, lines)
            return
        path = self.file_for(route)
        try:
            self._append(path, self._file_text(route, lines))
        except OSError as exc:
            if not self.failing:
                self.failing = True
                until = (
                    "the workers are replaced (a reload, SIGHUP): the worker's kernel wall "
                    "reaches only the log dir it started with"
                    if self.confined
                    else "the log dir works again"
                )
                logger.warning(
                    "cannot write module stderr to %s (%s): it goes to this log until %s",
                    path,
                    exc.strerror or exc,
                    until,
                )
            self._to_error_log(route, lines)
            return
        if self.failing:
            self.failing = False
            logger.warning("module stderr goes to %s again", self.log_dir)

    def _to_error_log(self, route: str, lines: list[str]) -> None:
        for line in lines:
            if self.formatter is not None:
                logger.info("%s", line, extra={"route": route})
            else:
                logger.info("[%s] %s", route, line)

    def _file_text(self, route: str, lines: list[str]) -> str:
        if self.formatter is None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            return "".join(f"{stamp} [{route}] {line}\n" for line in lines)
        records = (
            logger.makeRecord(
                logger.name, logging.INFO, "", 0, line, (), None, extra={"route": route}
            )
            for line in lines
        )
        return "".join(self.formatter.format(record) + "\n" for record in records)

    def _append(self, path: Path, text: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as out:
                out.write(text)
        except FileNotFoundError:  # the log dir was removed while serving: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as out:
                out.write(text)
