"""A run's WASI context on the wasmtime engine: argv, environment, stdin and preopens.

A ``wasi_config_t`` is filled through the C API (:mod:`.capi`), for a core module's
WASI preview 1 and a component's WASI 0.2 alike. Strings go over as one encoded block
each (:func:`_string_block`), and a route's environment names are encoded once
(:func:`_names_block`): this is most of a run's Python.
"""

from __future__ import annotations

import ctypes
import os
from array import array
from collections.abc import Iterable
from ctypes import byref, c_void_p
from itertools import accumulate
from pathlib import Path

from wagi.engines.base import EngineError, Invocation
from wagi.engines.wasmtime import capi
from wagi.engines.wasmtime.run import _one_line

lib = capi.lib


def _configure_wasi(ctx: int, path: Path, invocation: Invocation) -> None:
    """argv, env (only the invocation's), stdin and preopens for one run."""
    _set_wasi(ctx, path, _wasi_config(path, invocation))


def _wasi_config(path: Path, invocation: Invocation) -> int:
    """A ``wasi_config_t`` with argv, env (only the invocation's), stdin and preopens."""
    wasi = lib.wasi_config_new()
    env = invocation.env
    try:
        argv_keep, argv_array, argc = _string_block(invocation.argv)
        names_keep, names_array, count = _names_block(tuple(env))
        values_keep, values_array, _ = _string_block(env.values())
    except ValueError as exc:
        _discard_wasi(wasi)
        raise EngineError(f"{path}: {exc}") from None
    lib.wasi_config_set_argv(wasi, argc, argv_array)
    lib.wasi_config_set_env(wasi, count, names_array, values_array)
    del argv_keep, names_keep, values_keep  # wasmtime copied them
    stdin = invocation.stdin
    if invocation.stdin_file is not None:
        if not lib.wasi_config_set_stdin_file(wasi, os.fsencode(invocation.stdin_file)):
            _discard_wasi(wasi)
            raise EngineError(f"{path}: cannot open the request body {invocation.stdin_file}")
    elif stdin:
        vec = capi.ByteVec()
        lib.wasm_byte_vec_new(byref(vec), len(stdin), stdin)  # wasmtime's own copy
        lib.wasi_config_set_stdin_bytes(wasi, byref(vec))  # takes the vector's contents
    for preopen in invocation.preopens:
        if not lib.wasi_config_preopen_dir(
            wasi,
            os.fsencode(preopen.host_path),
            preopen.guest_path.encode(),
            not preopen.read_only,
        ):
            _discard_wasi(wasi)
            raise EngineError(
                f"{path}: cannot open volume {preopen.host_path} (for {preopen.guest_path})"
            )
    return int(wasi)


def _set_wasi(ctx: int, path: Path, wasi: int) -> None:
    """Give the store its WASI context (for a core module's preview 1 and a component's 0.2)."""
    error = lib.wasmtime_context_set_wasi(ctx, wasi)  # takes ownership of the config
    if error:
        message = capi.take_message(lib.wasmtime_error_message, error)
        lib.wasmtime_error_delete(error)
        raise EngineError(f"{path}: invalid WASI state: {_one_line(message)}")


def _discard_wasi(wasi: int) -> None:
    lib.wasi_config_delete(wasi)


_PLUS_ONE = (1).__add__


def _bytes_data_offset() -> int | None:
    """Where a ``bytes`` object's data starts, from its ``id`` (CPython's layout; the
    same from 3.10 to 3.13). ``ctypes.cast`` finds the same address in about 0.8 µs, twice
    per run; ``None`` (use ctypes) if this interpreter lays bytes out otherwise."""
    probe = b"wagi probe"
    offset = (ctypes.cast(probe, c_void_p).value or 0) - id(probe)  # type: ignore[arg-type]
    again = b"another, longer probe"
    if (ctypes.cast(again, c_void_p).value or 0) - id(again) != offset:  # type: ignore[arg-type]
        return None
    return offset


_BYTES_DATA = _bytes_data_offset()


def _string_block(texts: Iterable[str]) -> tuple[object, int, int]:
    """A ``char **`` of ``texts`` for the WASI setters: ``(keep_alive, address, count)``.

    One encode of all the strings joined by NULs, and one array of addresses into it:
    about a third of encoding them one by one (a run's 25 CGI variables, twice).
    """
    items = list(texts)
    if not items:
        return None, 0, 0
    joined = "\0".join(items)
    try:
        blob = joined.encode() + b"\0"
    except UnicodeEncodeError:
        return *capi.string_array(_c_strings(items)), len(items)
    if blob.count(0) != len(items):  # one of them holds a NUL of its own
        _c_strings(items)  # raises, naming it
    if len(blob) == len(joined) + 1:  # one byte per character: lengths from the strings
        lengths: Iterable[int] = map(_PLUS_ONE, map(len, items))
    else:
        lengths = [len(item.encode()) + 1 for item in items]
    if _BYTES_DATA is not None:
        base = id(blob) + _BYTES_DATA
    else:
        base = ctypes.cast(blob, c_void_p).value or 0  # type: ignore[arg-type]
    addresses = array("Q", accumulate(lengths, initial=base))
    return (blob, addresses), addresses.buffer_info()[0], len(items)


_NAMES: dict[tuple[str, ...], tuple[object, int, int]] = {}
"""Encoded environment names, by the names in their order: a route's runs mostly pass the
same names (its variables and the CGI ones, the client's headers), and wasmtime copies the
strings, so one encoded block serves every run that has them."""

_NAMES_KEPT = 256


def _names_block(names: tuple[str, ...]) -> tuple[object, int, int]:
    block = _NAMES.get(names)
    if block is None:
        block = _string_block(names)
        if len(_NAMES) >= _NAMES_KEPT:
            _NAMES.clear()
        _NAMES[names] = block
    return block


def _c_strings(texts: Iterable[str]) -> list[bytes]:
    """UTF-8 for WASI strings. Lone surrogates (from undecodable request bytes) become
    U+FFFD rather than failing the request; a NUL cannot cross into a C string at all."""
    try:
        encoded = [text.encode() for text in texts]
    except UnicodeEncodeError:
        encoded = [
            text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode()
            for text in texts
        ]
    if b"\0" in b"".join(encoded):
        culprit = next(text for text in encoded if b"\0" in text)
        raise ValueError(f"a NUL byte cannot be passed to a module (in {culprit[:60]!r})")
    return encoded
