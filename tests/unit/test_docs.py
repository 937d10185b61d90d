"""The README's promises that code can check."""

from __future__ import annotations

from ..support.servers import ROOT


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "./run-tests" in readme and "./serve" in readme
    assert "./run-tests" in (ROOT / ".ci" / "run").read_text()
