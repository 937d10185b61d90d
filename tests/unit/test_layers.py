"""The package's layering (docs/architecture.md) is a contract that import-linter checks.

The contracts are in pyproject.toml; ./run-tests runs ``lint-imports`` next to ruff and mypy.
These tests show the check is real: it passes on the package as it is, and fails, naming the
contract and the import, on a copy with one import that breaks the layering.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is in the dev extra: pip install -e .[dev]"
)


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports finds the package from the directory it runs in.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120
    )


def copy_of_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "wagi", tmp_path / "wagi", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_contracts() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "offending_import", "contract"),
    [
        # An engine that reads modules.toml.
        (
            "engines/cache.py",
            "from wagi.config import ModuleEntry",
            "Engines know nothing of HTTP, modules.toml, the server or where runs happen",
        ),
        # The pure CGI code reaching for an engine.
        (
            "cgi/response.py",
            "from wagi.engines.base import RunResult",
            "CGI and routing are pure: they import no other part of wagi",
        ),
        # Configuration importing the server above it.
        ("config/settings.py", "import wagi.server.gateway", "Layers:"),
        # The gateway raising the wall itself.
        (
            "server/gateway.py",
            "from wagi.execution import landlock",
            "The gateway serves: it knows neither Landlock",
        ),
    ],
)
def test_an_import_across_the_layers_fails(
    tmp_path: Path, module: str, offending_import: str, contract: str
) -> None:
    root = copy_of_package(tmp_path)
    path = root / "wagi" / module
    text = path.read_text()
    # After the module's docstring and __future__ import, where imports go.
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    path.write_text(text.replace(anchor, f"{anchor}\n{offending_import}  # noqa\n", 1))
    result = lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert contract in result.stdout.replace("\n", " ")
    assert f"wagi.{module[:-3].replace('/', '.')}" in result.stdout
