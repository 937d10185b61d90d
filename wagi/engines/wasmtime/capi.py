"""The slice of wasmtime's C API that a module run uses, declared once.

wasmtime-py's classes cost about 180 µs per instantiation with WASI (they
convert every string, walk every export and wrap every value); the C API
under them does the same work in about 15 µs. wagi's run path therefore calls
the C library that wasmtime-py ships directly, through prototypes declared
here with plain ``c_void_p`` handles (the cheapest ctypes conversion).

This is a private interface of the wasmtime package: ``setup.cfg`` pins the
tested range, and :func:`check` (run when the engine is created, and by a
test) fails loudly if the library lacks a symbol or a structure changed size.

Only the library handle and a few structures come from ``wasmtime._ffi``;
every prototype is wagi's own, on a separate handle, so wasmtime-py's own
calls keep their declarations.
"""

from __future__ import annotations

import ctypes
from array import array
from ctypes import POINTER, c_bool, c_char_p, c_int, c_int64, c_size_t, c_uint8, c_uint64, c_void_p
from itertools import accumulate
from typing import Any

from wasmtime import _ffi

lib = ctypes.CDLL(_ffi.dll._name)

# Structures passed by pointer; their layout is wasmtime's.
Extern = _ffi.wasmtime_extern_t
Instance = _ffi.wasmtime_instance_t
ByteVec = _ffi.wasm_byte_vec_t
ValRaw = _ffi.wasmtime_val_raw_t

FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)
NO_FINALIZER = ctypes.cast(0, FINALIZER)

UncheckedCallback = ctypes.CFUNCTYPE(c_void_p, c_void_p, c_void_p, POINTER(ValRaw), c_size_t)
"""``wasmtime_func_unchecked_callback_t``: (env, caller, args_and_results, len) -> trap."""

DeadlineCallback = ctypes.CFUNCTYPE(
    c_size_t, c_void_p, c_void_p, POINTER(c_uint64), POINTER(c_uint8)
)
"""Epoch-deadline callback: (context, env, *delta, *kind) -> error (0 to go on)."""
UPDATE_DEADLINE_CONTINUE = 0

EXTERN_MEMORY = 3

_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "wasmtime_store_new": (c_void_p, [c_void_p, c_void_p, FINALIZER]),
    "wasmtime_store_context": (c_void_p, [c_void_p]),
    "wasmtime_store_delete": (None, [c_void_p]),
    "wasmtime_store_limiter": (None, [c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64]),
    "wasmtime_context_set_wasi": (c_void_p, [c_void_p, c_void_p]),
    "wasmtime_context_set_epoch_deadline": (None, [c_void_p, c_uint64]),
    "wasmtime_store_epoch_deadline_callback": (
        None,
        [c_void_p, DeadlineCallback, c_void_p, FINALIZER],
    ),
    "wasmtime_error_new": (c_void_p, [c_char_p]),
    "wasi_config_new": (c_void_p, []),
    "wasi_config_delete": (None, [c_void_p]),
    "wasi_config_set_argv": (c_bool, [c_void_p, c_size_t, c_void_p]),
    "wasi_config_set_env": (c_bool, [c_void_p, c_size_t, c_void_p, c_void_p]),
    "wasi_config_set_stdin_bytes": (None, [c_void_p, c_void_p]),
    "wasi_config_set_stdin_file": (c_bool, [c_void_p, c_char_p]),
    "wasi_config_preopen_dir": (c_bool, [c_void_p, c_char_p, c_char_p, c_bool]),
    "wasm_byte_vec_new": (None, [c_void_p, c_size_t, c_char_p]),
    "wasm_byte_vec_delete": (None, [c_void_p]),
    "wasmtime_instance_pre_instantiate": (c_void_p, [c_void_p, c_void_p, c_void_p, c_void_p]),
    "wasmtime_instance_new": (
        c_void_p,
        [c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_void_p],
    ),
    "wasmtime_instance_export_get": (c_bool, [c_void_p, c_void_p, c_char_p, c_size_t, c_void_p]),
    "wasmtime_linker_get": (
        c_bool,
        [c_void_p, c_void_p, c_char_p, c_size_t, c_char_p, c_size_t, c_void_p],
    ),
    "wasmtime_linker_define_func_unchecked": (
        c_void_p,
        [
            c_void_p,
            c_char_p,
            c_size_t,
            c_char_p,
            c_size_t,
            c_void_p,
            UncheckedCallback,
            c_void_p,
            FINALIZER,
        ],
    ),
    "wasmtime_func_call": (
        c_void_p,
        [c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t, c_void_p],
    ),
    "wasmtime_func_call_unchecked": (c_void_p, [c_void_p, c_void_p, c_void_p, c_size_t, c_void_p]),
    "wasmtime_caller_context": (c_void_p, [c_void_p]),
    "wasmtime_caller_export_get": (c_bool, [c_void_p, c_char_p, c_size_t, c_void_p]),
    "wasmtime_memory_data": (c_void_p, [c_void_p, c_void_p]),
    "wasmtime_memory_data_size": (c_size_t, [c_void_p, c_void_p]),
    "wasmtime_trap_new": (c_void_p, [c_char_p, c_size_t]),
    "wasm_trap_message": (None, [c_void_p, c_void_p]),
    "wasm_trap_delete": (None, [c_void_p]),
    "wasmtime_error_exit_status": (c_bool, [c_void_p, POINTER(c_int)]),
    "wasmtime_error_message": (None, [c_void_p, c_void_p]),
    "wasmtime_error_delete": (None, [c_void_p]),
    "wasmtime_pooling_allocation_config_new": (c_void_p, []),
    "wasmtime_pooling_allocation_config_total_core_instances_set": (None, [c_void_p, c_uint64]),
    "wasmtime_pooling_allocation_config_total_memories_set": (None, [c_void_p, c_uint64]),
    "wasmtime_pooling_allocation_config_total_tables_set": (None, [c_void_p, c_uint64]),
    "wasmtime_pooling_allocation_config_total_stacks_set": (None, [c_void_p, c_uint64]),
    "wasmtime_pooling_allocation_config_max_memory_size_set": (None, [c_void_p, c_size_t]),
    "wasmtime_pooling_allocation_config_max_unused_warm_slots_set": (None, [c_void_p, c_uint64]),
    "wasmtime_pooling_allocation_strategy_set": (None, [c_void_p, c_void_p]),
    "wasmtime_pooling_allocation_config_delete": (None, [c_void_p]),
}


def declare(handle: ctypes.CDLL, prototypes: dict[str, tuple[Any, list[Any]]]) -> None:
    """Give ``handle``'s functions their result and argument types."""
    for name, (restype, argtypes) in prototypes.items():
        function = getattr(handle, name)
        function.restype = restype
        function.argtypes = argtypes


declare(lib, _PROTOTYPES)

# The layouts wagi relies on (wasmtime.h of wasmtime 50): a check, not a guess.
_SIZES = {
    "wasmtime_extern_t": (Extern, 32),
    "wasmtime_instance_t": (Instance, 16),
    "wasm_byte_vec_t": (ByteVec, 16),
    "wasmtime_val_raw_t": (ValRaw, 16),
}


def check() -> None:
    """Raise ImportError if this wasmtime library is not the one wagi was built against."""
    check_library(lib, _PROTOTYPES, _SIZES)


def check_library(
    handle: ctypes.CDLL,
    prototypes: dict[str, tuple[Any, list[Any]]],
    sizes: dict[str, tuple[Any, int]],
) -> None:
    """Raise ImportError if ``handle`` lacks one of ``prototypes`` or one of the structures
    in ``sizes`` is not the size wagi expects."""
    missing = [name for name in prototypes if not hasattr(handle, name)]
    if missing:
        raise ImportError(f"the wasmtime C library lacks {', '.join(missing)}")
    for name, (struct, size) in sizes.items():
        if ctypes.sizeof(struct) != size:
            raise ImportError(
                f"wasmtime's {name} is {ctypes.sizeof(struct)} bytes, wagi expects {size}"
            )


def take_message(getter: Any, handle: int) -> str:
    """The text of an error or trap (``wasmtime_error_message``/``wasm_trap_message``)."""
    vec = ByteVec()
    getter(handle, ctypes.byref(vec))
    try:
        return ctypes.string_at(vec.data, vec.size).decode("utf-8", "replace")
    finally:
        lib.wasm_byte_vec_delete(ctypes.byref(vec))


def string_array(items: list[bytes]) -> tuple[object, int]:
    """A ``char **`` for the WASI setters: ``(keep_alive, address)``.

    One joined buffer and one array of addresses: about 1 µs for 25 strings,
    where a ctypes ``(c_char_p * n)(*items)`` costs about 4 µs.
    """
    blob = b"\0".join(items) + b"\0"
    base = ctypes.cast(blob, c_void_p).value or 0  # type: ignore[arg-type]
    addresses = array("Q", accumulate([len(item) + 1 for item in items], initial=base))
    return (blob, addresses), addresses.buffer_info()[0]
