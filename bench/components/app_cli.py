"""componentize-py entry point: ``bench/cgi/hello.py`` as a ``wasi:cli/run`` command component.

Built by ``bench/artifacts.py`` with the world in ``wit-cli/`` (``-w hello``).
"""

import hello
from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        hello.main()
