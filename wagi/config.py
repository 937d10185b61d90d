"""Reading ``modules.toml`` into well-typed objects, once, at start-up.

Every problem stops start-up with a :class:`ConfigError` whose message names the
file, the entry (by its route) and the key, e.g.::

    samples/modules.toml: [[module]] #2 (route "/env"), key "volumes": host directory
    "data" (/srv/data) does not exist

After :func:`load_config` returns, the rest of wagi never checks the
configuration again: it only uses it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from wagi.settings import parse_byte_size, parse_seconds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.10 leg
    import tomli as tomllib

DEFAULT_ARGV = "${SCRIPT_NAME} ${ARGS}"
DEFAULT_ENTRYPOINT = "_start"
MODULE_SUFFIXES = (".wasm", ".wat")

_KNOWN_KEYS = frozenset(
    {
        "route",
        "module",
        "entrypoint",
        "volumes",
        "environment",
        "argv",
        "allowed_hosts",
        "http_max_concurrency",
        "timeout",
        "max_memory",
        "repository",
    }
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT_NAME = re.compile(r"[^\s]+")


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Volume:
    """A host directory shown to the module at ``guest_path``."""

    guest_path: str
    host_path: Path
    read_only: bool = False


@dataclass(frozen=True)
class ModuleEntry:
    """One ``[[module]]`` table: what to run for a route."""

    index: int
    """Position in the file, from 1; earlier entries win ties between equal routes."""
    route: str
    module: Path
    entrypoint: str = DEFAULT_ENTRYPOINT
    volumes: tuple[Volume, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    argv: str = DEFAULT_ARGV
    timeout: float | None = None
    max_memory: int | None = None


@dataclass(frozen=True)
class Config:
    """A parsed ``modules.toml``."""

    path: Path
    modules: tuple[ModuleEntry, ...]


def validate_route(route: str) -> str:
    """Return ``route`` if it is ``/exact`` or ``/prefix/...``; raise ValueError otherwise."""
    if not isinstance(route, str) or not route.startswith("/"):
        raise ValueError(f"a route must start with '/', got {route!r}")
    if any(c.isspace() for c in route) or "?" in route or "#" in route:
        raise ValueError(f"a route cannot contain spaces, '?' or '#', got {route!r}")
    base = route[: -len("/...")] if route.endswith("/...") else route
    if "..." in base:
        raise ValueError(f"'...' may only end a route, as in '/path/...', got {route!r}")
    return route


def load_config(path: Path | str) -> Config:
    """Parse and check a ``modules.toml``; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from None
    except ValueError:  # a NUL in the path: no file can have that name
        raise ConfigError(
            f"{path}: cannot read configuration file: the path holds a NUL byte"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    """Turn an already-decoded TOML document into a :class:`Config`."""
    unknown = sorted(set(data) - {"module"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key {unknown[0]!r}; "
            "routes are declared as [[module]] tables"
        )
    tables = data.get("module", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: 'module' must be an array of tables, written [[module]]")
    if not tables:
        raise ConfigError(f"{path}: no [[module]] entries; nothing to serve")
    base_dir = path.parent.resolve()
    entries: list[ModuleEntry] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables, start=1):
        entry = _EntryParser(path, base_dir, index, table).parse()
        if entry.route in seen:
            raise ConfigError(
                f"{path}: [[module]] #{index} (route {entry.route!r}), key 'route': duplicate "
                f"route, already declared by [[module]] #{seen[entry.route]}"
            )
        seen[entry.route] = index
        entries.append(entry)
    return Config(path=path, modules=tuple(entries))


class _EntryParser:
    def __init__(self, path: Path, base_dir: Path, index: int, table: dict[str, Any]) -> None:
        self.path = path
        self.base_dir = base_dir
        self.index = index
        self.table = table
        route = table.get("route")
        self.where = f"{path}: [[module]] #{index}" + (
            f" (route {route!r})" if isinstance(route, str) else ""
        )

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}, key {key!r}: {message}")

    def parse(self) -> ModuleEntry:
        t = self.table
        for key in t:
            if key not in _KNOWN_KEYS:
                known = ", ".join(sorted(_KNOWN_KEYS))
                raise self.error(key, f"unknown key (known keys: {known})")
        if "route" not in t:
            raise self.error("route", "missing; every [[module]] needs a route")
        if "module" not in t:
            raise self.error("module", "missing; every [[module]] needs a module file")
        try:
            route = validate_route(t["route"])
        except ValueError as exc:
            raise self.error("route", str(exc)) from None
        if t.get("allowed_hosts"):
            raise self.error(
                "allowed_hosts", "outbound HTTP (wasi-experimental-http) is not supported yet"
            )
        if "http_max_concurrency" in t:
            raise self.error(
                "http_max_concurrency",
                "outbound HTTP (wasi-experimental-http) is not supported yet",
            )
        return ModuleEntry(
            index=self.index,
            route=route,
            module=self.module_path(t["module"]),
            entrypoint=self.string("entrypoint", DEFAULT_ENTRYPOINT, pattern=_EXPORT_NAME),
            volumes=self.volumes(t.get("volumes", {})),
            environment=self.environment(t.get("environment", {})),
            argv=self.string("argv", DEFAULT_ARGV),
            timeout=self.limit("timeout", parse_seconds),
            max_memory=self.limit("max_memory", parse_byte_size),
        )

    def string(self, key: str, default: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(key, f"not a valid export name: {value!r}")
        return value

    def limit(self, key: str, parse: Any) -> Any:
        if key not in self.table:
            return None
        try:
            return parse(self.table[key])
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def resolve(self, key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a path, got {value!r}")
        raw: str = value
        if raw.startswith("file://"):
            try:
                parts = urlsplit(raw)
            except ValueError as exc:  # e.g. an unclosed [ in the host part
                raise self.error(key, f"invalid file:// URL {raw!r}: {exc}") from None
            if parts.netloc not in ("", "localhost"):
                raise self.error(key, f"only local file:// URLs are supported, got {raw!r}")
            raw = unquote(parts.path)
        elif "://" in raw:
            raise self.error(key, f"only plain paths and file:// URLs are supported, got {raw!r}")
        if "\0" in raw:
            raise self.error(key, f"the path {value!r} holds a NUL byte")
        try:
            return (self.base_dir / raw).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (before 3.13)
            raise self.error(key, f"cannot resolve {value!r}: {_reason(exc)}") from None

    def module_path(self, raw: Any) -> Path:
        path = self.resolve("module", raw)
        if path.suffix not in MODULE_SUFFIXES:
            raise self.error("module", f"expected a .wasm or .wat file, got {raw!r}")
        try:
            is_file = path.is_file()
        except OSError as exc:  # a name too long, say
            raise self.error("module", f"module file {raw!r}: {_reason(exc)}") from None
        if not is_file:
            raise self.error("module", f"module file {raw!r} ({path}) does not exist")
        if not os.access(path, os.R_OK):
            raise self.error("module", f"module file {raw!r} ({path}) is not readable")
        return path

    def volumes(self, raw: Any) -> tuple[Volume, ...]:
        if not isinstance(raw, dict):
            raise self.error("volumes", 'expected a table such as { "/data" = "data" }')
        volumes = []
        for guest, spec in raw.items():
            if not guest.startswith("/"):
                raise self.error("volumes", f"guest path {guest!r} must be absolute")
            read_only = False
            if isinstance(spec, dict):
                extra = set(spec) - {"path", "read_only"}
                if extra or "path" not in spec:
                    raise self.error(
                        "volumes",
                        f'volume {guest!r}: expected {{ path = "...", read_only = true }}',
                    )
                read_only = spec.get("read_only", False)
                if not isinstance(read_only, bool):
                    raise self.error("volumes", f"volume {guest!r}: read_only must be true/false")
                spec = spec["path"]
            host = self.resolve("volumes", spec)
            try:
                is_dir = host.is_dir()
            except OSError as exc:
                raise self.error("volumes", f"volume {guest!r}: {_reason(exc)}") from None
            if not is_dir:
                raise self.error(
                    "volumes", f"volume {guest!r}: host directory {spec!r} ({host}) does not exist"
                )
            if not os.access(host, os.R_OK | os.X_OK):
                raise self.error(
                    "volumes", f"volume {guest!r}: host directory {spec!r} ({host}) is not readable"
                )
            volumes.append(Volume(guest_path=guest, host_path=host, read_only=read_only))
        return tuple(volumes)

    def environment(self, raw: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(raw, dict):
            raise self.error("environment", 'expected a table such as { NAME = "value" }')
        pairs = []
        for name, value in raw.items():
            if not _ENV_NAME.fullmatch(name):
                raise self.error("environment", f"{name!r} is not a valid variable name")
            if not isinstance(value, str):
                raise self.error("environment", f"{name}: expected a string, got {value!r}")
            pairs.append((name, value))
        return tuple(pairs)


def _reason(exc: BaseException) -> str:
    """An OS error's reason without the (possibly huge) path it carries."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def load_env_file(path: Path) -> tuple[tuple[str, str], ...]:
    """Read ``NAME=value`` lines (blank lines and ``#`` comments skipped) for ``--env-file``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read environment file: {exc.strerror}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{path}:{number}: expected NAME=value, got {line!r}")
        pairs.append((name, value))
    return tuple(pairs)
