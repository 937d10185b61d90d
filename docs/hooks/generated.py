"""mkdocs hook: the parts of the documentation that come from the code or the deploy kit.

A page asks for them with an HTML comment on a line of its own:

``<!-- generated: settings -->``
    the server options (``wagi.config.settings.reference_table()``);
``<!-- generated: module-keys -->``
    the ``[[module]]`` keys (``wagi.config.module_keys_table()``);
``<!-- include: deploy/nginx/wagi.conf -->``
    a file of the repository, verbatim (put it inside a code fence);
``<!-- section: deploy/README.md -->``
    a Markdown file of the repository as a section of the page: its headings one level down.

An unknown directive or a missing file stops the build, so the reference cannot silently go
stale or empty.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

from wagi.config import module_keys_table
from wagi.config.settings import reference_table

GENERATORS = {"settings": reference_table, "module-keys": module_keys_table}
DIRECTIVE = re.compile(r"^<!-- (generated|include|section): (\S+) -->$", re.M)


def demote_headings(markdown: str) -> str:
    """``# Title`` -> ``## Title``, outside code fences."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            line = "#" + line
        lines.append(line)
    return "\n".join(lines)


def expand(markdown: str, root: Path, where: str = "page") -> str:
    """Replace every directive of ``markdown``; ``root`` is the repository's top directory."""

    def replace(match: re.Match[str]) -> str:
        kind, argument = match.groups()
        if kind == "generated":
            if argument not in GENERATORS:
                known = ", ".join(sorted(GENERATORS))
                raise PluginError(f"{where}: unknown generated table {argument!r} ({known})")
            return GENERATORS[argument]()
        path = (root / argument).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            raise PluginError(
                f"{where}: cannot include {argument!r}: no such file in the repository"
            )
        text = path.read_text(encoding="utf-8").rstrip("\n")
        return demote_headings(text) if kind == "section" else text

    return DIRECTIVE.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = Path(config["config_file_path"]).parent
    return expand(markdown, root, page.file.src_path)
