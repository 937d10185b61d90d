"""The wasmer engine (wasmer-python 1.1 with cranelift; CPython 3.10 and older).

- :mod:`~wagi.engines.wasmer.engine`: the engine (compiling, linking, one run);
- :mod:`~wagi.engines.wasmer.captures`: the memfds a run's stdio goes to;
- :mod:`~wagi.engines.wasmer.host`: outbound HTTP and the fd table wasmer's WASI lacks.

Importing this package imports no ``wasmer``: that happens when an engine is made.
"""

from wagi.engines.wasmer.engine import WasmerEngine, WasmerModule

__all__ = ["WasmerEngine", "WasmerModule"]
