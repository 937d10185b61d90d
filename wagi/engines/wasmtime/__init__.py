"""The wasmtime engine (wasmtime-py's C library, on every CPython wagi supports).

- :mod:`~wagi.engines.wasmtime.engine`: the engine and its compiled modules (compiling,
  linking, one run); its docstring says how the pieces below fit, and why;
- :mod:`~wagi.engines.wasmtime.run`: one run's state, how host code stops it, how it ended;
- :mod:`~wagi.engines.wasmtime.shims`: wagi's host functions over WASI's and the forwarder
  through which they call WASI's own;
- :mod:`~wagi.engines.wasmtime.ticker`: the epoch ticker behind timeouts;
- :mod:`~wagi.engines.wasmtime.wasi`: a run's WASI context (argv, environment, stdin,
  preopens);
- :mod:`~wagi.engines.wasmtime.component`: WASI 0.2 command components;
- :mod:`~wagi.engines.wasmtime.capi`: the C API calls, declared once.
"""
