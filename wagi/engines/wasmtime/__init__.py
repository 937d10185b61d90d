"""The wasmtime engine: :mod:`~wagi.engines.wasmtime.engine` (the engine, its per-run
state, WASI set-up and epoch ticker, for now in one file) over the C API calls of
:mod:`~wagi.engines.wasmtime.capi`."""
