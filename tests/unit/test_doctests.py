"""The examples in wagi's docstrings run, and show what they say (``>>>`` lines are doctests).

An example that is not meant to run is written as a ``::`` literal block instead.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

from ..support.servers import ROOT

PACKAGE = ROOT / "wagi"
# Importing these runs them (the command, the WSGI app built from the environment).
RUN_ON_IMPORT = {"wagi.__main__", "wagi.wsgi"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


WITH_EXAMPLES = sorted(
    module_name(path) for path in PACKAGE.rglob("*.py") if ">>>" in path.read_text()
)


def test_some_modules_have_examples() -> None:
    assert WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name: str) -> None:
    assert name not in RUN_ON_IMPORT, f"{name} runs on import: its examples cannot run here"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # wasmer's engine imports on the CPython 3.10 leg only
        pytest.skip(f"{name} does not import here: {exc}")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
    assert runner.tries > 0, f"{name} has '>>>' but no example ran"
