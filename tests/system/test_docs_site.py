"""The documentation site's generated parts: the hook, and the registry of modules.toml keys."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from wagi.config import MODULE_KEYS, ConfigError, module_keys_table, parse_config
from wagi.config.settings import reference_table

from ..support.servers import PROBE, ROOT

pytest.importorskip("mkdocs")


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hook", ROOT / "docs" / "hooks" / "generated.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hook_fills_in_the_tables_and_files(tmp_path: Path) -> None:
    hook = load_hook()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.conf").write_text("listen 80;\n")
    (tmp_path / "part.md").write_text("# Part\n\n```sh\n# not a heading\n```\n## Sub\n")
    page = (
        "# Title\n<!-- generated: settings -->\ntext\n<!-- generated: module-keys -->\n"
        "```\n<!-- include: conf/a.conf -->\n```\n<!-- section: part.md -->\n"
    )
    assert hook.expand(page, tmp_path) == (
        f"# Title\n{reference_table()}\ntext\n{module_keys_table()}\n```\nlisten 80;\n```\n"
        "## Part\n\n```sh\n# not a heading\n```\n### Sub\n"
    )


@pytest.mark.parametrize(
    ("page", "error"),
    [
        ("<!-- generated: colours -->\n", "unknown generated table 'colours'"),
        ("<!-- include: missing.conf -->\n", "cannot include 'missing.conf'"),
        ("<!-- include: ../outside.conf -->\n", "cannot include '../outside.conf'"),
    ],
)
def test_the_hook_stops_the_build_on_a_bad_directive(tmp_path: Path, page: str, error: str) -> None:
    from mkdocs.exceptions import PluginError

    (tmp_path.parent / "outside.conf").write_text("x")
    root = tmp_path / "repo"
    root.mkdir()
    with pytest.raises(PluginError, match=error):
        load_hook().expand(page, root, "page.md")


def test_every_documented_key_is_one_the_parser_knows(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "static").mkdir()
    (tmp_path / "files.wasm").write_bytes(PROBE.read_bytes())
    for key in MODULE_KEYS:
        table = {"route": "/files/...", "module": "files.wasm"}
        example = parse_example(f"{key.name} = {key.example}")
        table |= example
        try:
            parse_config({"module": [table]}, tmp_path / "modules.toml")
        except ConfigError as exc:
            # Only the keys documented as refusing may refuse, and never as unknown.
            assert "not supported yet" in key.meaning, exc
            assert "unknown key" not in str(exc)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(
            {"module": [{"route": "/x", "module": "files.wasm", "colour": 1}]},
            tmp_path / "modules.toml",
        )


def parse_example(line: str) -> dict[str, object]:
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads(line)
