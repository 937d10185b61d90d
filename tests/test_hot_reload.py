"""A module file replaced while serving must pass the start-up checks before it is served."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Server

GOOD = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\\n\\n{text}\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {length}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def good(text: str) -> str:
    return GOOD.format(text=text, length=len(f"Content-Type: text/plain\n\n{text}\n"))


NO_ENTRYPOINT = '(module (memory (export "memory") 1) (func (export "other")))'
UNKNOWN_IMPORT = (
    '(module (import "somewhere" "else" (func)) (memory (export "memory") 1) '
    '(func (export "_start")))'
)


def replace(path: Path, text: str) -> None:
    """Write a new version with a new identity (mtime and inode)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)
    time.sleep(0.01)


def test_a_replaced_module_is_checked_like_at_start_up(
    server_factory: Callable[..., Server], engine: str, tmp_path: Path
) -> None:
    module = tmp_path / "m.wat"
    module.write_text(good("one"))
    server = server_factory(f'[[module]]\nroute = "/m"\nmodule = "{module}"\n', engine, workers=1)
    assert server.get("/m").text == "one\n"

    replace(module, NO_ENTRYPOINT)
    r = server.get("/m")
    assert (r.status_code, r.text) == (
        500,
        "500 Internal Server Error: the module could not be loaded\n",
    )
    assert "the module exports no function '_start'; it is not served until it does" in server.log()

    replace(module, UNKNOWN_IMPORT)
    assert server.get("/m").status_code == 500
    assert "somewhere" in server.log()

    replace(module, good("two"))
    assert server.get("/m").text == "two\n"
    assert server.get("/healthz").status_code == 200
