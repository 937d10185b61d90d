"""Reading ``modules.toml`` into well-typed objects, once, at start-up.

Every problem stops start-up with a :class:`ConfigError` whose message names the
file, the entry (by its route) and the key, e.g.::

    samples/modules.toml: [[module]] #2 (route "/env"), key "volumes": host directory
    "data" (/srv/data) does not exist

After :func:`load_config` returns, the rest of wagi never checks the
configuration again: it only uses it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from wagi.cgi.request import DEFAULT_ARGV, ArgvTemplate
from wagi.config.references import (
    LocalModule,
    ModuleSource,
    parse_oci_reference,
)
from wagi.config.settings import ENV_NAME, parse_byte_size, parse_seconds
from wagi.outbound.policy import Origin, parse_allowed_hosts, parse_max_concurrency
from wagi.routing import validate_host, validate_route

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.10 leg
    import tomli as tomllib

DEFAULT_ENTRYPOINT = "_start"
MODULE_SUFFIXES = (".wasm", ".wat")


_EXPORT_NAME = re.compile(r"[^\s]+")


DEFAULT_TMP_PATH = "/tmp"
DEFAULT_TMP_MAX_SIZE = 64 * 1024**2


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


def entry_label(index: int, route: object = None) -> str:
    """How every message names an entry: ``[[module]] #2 (route '/x')``."""
    return f"[[module]] #{index}" + (f" (route {route!r})" if isinstance(route, str) else "")


@dataclass(frozen=True)
class Volume:
    """A host directory shown to the module at ``guest_path``."""

    guest_path: str
    host_path: Path
    read_only: bool = False


@dataclass(frozen=True)
class Scratch:
    """A route's ``tmp``: a private, empty directory per request (:mod:`wagi.execution.scratch`)."""

    guest_path: str = DEFAULT_TMP_PATH
    max_size: int = DEFAULT_TMP_MAX_SIZE
    """Bytes a request may write to files (plus 4 KiB per file, directory or link made)."""


_Parse = Callable[["_EntryParser", Any], Any]
"""A key's parser: the entry's parser (for the file's directory, earlier keys and
messages) and the TOML value; it raises ValueError (or ConfigError) saying what is wrong."""


@dataclass(frozen=True)
class ModuleKey:
    """One key of a ``[[module]]`` table: how it is parsed, its default, and how the
    reference documentation shows it. Declared on :class:`ModuleEntry`'s fields."""

    name: str
    meaning: str
    example: str
    parse: _Parse
    missing: str | None = None
    """For a required key, what the message names as missing ("a route"); else None."""
    default: Any = None
    """What an entry without the key gets."""

    @property
    def required(self) -> bool:
        return self.missing is not None


class _EntryParser:
    """Parses one ``[[module]]`` table; its methods are the parsers of the keys that need
    the file's directory or an earlier key."""

    def __init__(self, path: Path, base_dir: Path, index: int, table: dict[str, Any]) -> None:
        self.path = path
        self.base_dir = base_dir
        self.index = index
        self.table = table
        self.where = f"{path}: {entry_label(index, table.get('route'))}"
        self.values: dict[str, Any] = {}
        """The keys parsed so far, by name (``tmp`` looks at ``volumes``)."""

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}, key {key!r}: {message}")

    def parse(self) -> ModuleEntry:
        """Every key of :data:`MODULE_KEYS` the table holds, parsed in that order."""
        t = self.table
        for key in t:
            if key not in _KNOWN_KEYS:
                known = ", ".join(sorted(_KNOWN_KEYS))
                raise self.error(key, f"unknown key (known keys: {known})")
        for module_key in MODULE_KEYS:
            if module_key.missing is not None and module_key.name not in t:
                raise self.error(
                    module_key.name, f"missing; every [[module]] needs {module_key.missing}"
                )
        for module_key in MODULE_KEYS:
            if module_key.name in t:
                try:
                    self.values[module_key.name] = module_key.parse(self, t[module_key.name])
                except ValueError as exc:
                    raise self.error(module_key.name, str(exc)) from None
        # A key the table does not hold takes its field's default.
        return ModuleEntry(index=self.index, **self.values)

    def entrypoint(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a non-empty string, got {value!r}")
        if not _EXPORT_NAME.fullmatch(value):
            raise ValueError(f"not a valid export name: {value!r}")
        return value

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
            what = "file:// URLs and oci:// references" if key == "module" else "file:// URLs"
            raise self.error(key, f"only plain paths, {what} are supported, got {raw!r}")
        if "\0" in raw:
            raise self.error(key, f"the path {value!r} holds a NUL byte")
        try:
            return (self.base_dir / raw).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (before 3.13)
            raise self.error(key, f"cannot resolve {value!r}: {_reason(exc)}") from None

    def module_source(self, raw: Any) -> ModuleSource:
        if isinstance(raw, str) and raw.startswith("oci:"):
            try:
                return parse_oci_reference(raw)
            except ValueError as exc:
                raise self.error("module", str(exc)) from None
        return LocalModule(self.module_path(raw))

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

    def scratch(self, raw: Any) -> Scratch | None:
        """``tmp = true``, ``"/scratch"`` or ``{ path = "/tmp", max_size = "1 GiB" }``."""
        if raw is False:
            return None
        # true is the default path, which a volume may hold too
        spec = {} if raw is True else {"path": raw} if isinstance(raw, str) else raw
        if not isinstance(spec, dict) or set(spec) - {"path", "max_size"}:
            raise self.error(
                "tmp",
                'expected true, a guest path such as "/tmp", or '
                '{ path = "/tmp", max_size = "64 MiB" }',
            )
        path = spec.get("path", DEFAULT_TMP_PATH)
        if not isinstance(path, str) or not path.startswith("/") or path == "/":
            raise self.error("tmp", f"the guest path must be absolute and not '/', got {path!r}")
        if any(v.guest_path == path for v in self.values.get("volumes", ())):
            raise self.error("tmp", f"{path!r} is already a volume")
        max_size = DEFAULT_TMP_MAX_SIZE
        if "max_size" in spec:
            try:
                max_size = parse_byte_size(spec["max_size"])
            except ValueError as exc:
                raise self.error("tmp", f"max_size: {exc}") from None
        return Scratch(path.rstrip("/"), max_size)

    def environment(self, raw: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(raw, dict):
            raise self.error("environment", 'expected a table such as { NAME = "value" }')
        pairs = []
        for name, value in raw.items():
            if not ENV_NAME.fullmatch(name):
                raise self.error("environment", f"{name!r} is not a valid variable name")
            if not isinstance(value, str):
                raise self.error("environment", f"{name}: expected a string, got {value!r}")
            pairs.append((name, value))
        return tuple(pairs)


def _key(
    meaning: str, example: str, parse: _Parse, *, missing: str | None = None
) -> dict[str, ModuleKey]:
    """A field's metadata that makes it a ``[[module]]`` key (its name and default are the
    field's)."""
    return {"key": ModuleKey("", meaning, example, parse, missing=missing)}


def _plain(parse: Callable[[Any], Any]) -> _Parse:
    """A parser of the value alone (raising ValueError), as a key's parser."""
    return lambda _parser, value: parse(value)


@dataclass(frozen=True)
class ModuleEntry:
    """One ``[[module]]`` table: what to run for a route.

    Every field but ``index`` is a key of the table, declared here once: its type, the
    default a table without it gets, and (in its metadata) its parser and the words of the
    configuration reference. The parser, :data:`MODULE_KEYS` and the generated reference
    all read these declarations.
    """

    index: int
    """Position in the file, from 1; earlier entries win ties between equal routes."""
    route: str = field(
        metadata=_key(
            "`/path` matches exactly that path; `/path/...` matches `/path` and everything "
            "below it (not `/pathX`); `/...` matches every path.",
            '"/files/..."',
            _plain(validate_route),
            missing="a route",
        )
    )
    module: ModuleSource = field(
        metadata=_key(
            "The `.wasm` or `.wat` file to run: a path relative to modules.toml, an absolute "
            "path, a `file://` URL, or an OCI artifact `oci://registry/repository:tag` (or "
            "`@sha256:<digest>`), pulled and verified at start-up.",
            '"files.wasm"',
            _EntryParser.module_source,
            missing="a module file",
        )
    )
    entrypoint: str = field(
        default=DEFAULT_ENTRYPOINT,
        metadata=_key(
            f"The export to call (default `{DEFAULT_ENTRYPOINT}`).",
            '"serve"',
            _EntryParser.entrypoint,
        ),
    )
    volumes: tuple[Volume, ...] = field(
        default=(),
        metadata=_key(
            "Host directories the module may see (WASI preopens): guest path = host "
            "directory, relative to modules.toml; a table with `read_only = true` makes one "
            "read-only.",
            '{ "/data" = "data", "/static" = { path = "static", read_only = true } }',
            _EntryParser.volumes,
        ),
    )
    environment: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=_key(
            "Environment variables for this module; the CGI variables cannot be overridden.",
            '{ GREETING = "hello" }',
            _EntryParser.environment,
        ),
    )
    argv: ArgvTemplate = field(
        default=DEFAULT_ARGV,
        metadata=_key(
            f"The command line: a template with `${{SCRIPT_NAME}}` and `${{ARGS}}` (the query "
            f"items), split on whitespace (default `{DEFAULT_ARGV}`); or a list of strings, "
            "whose items may hold spaces, where an item `${ARGS}` expands to the query's items.",
            '["tool", "-p", "read x; run y", "${ARGS}"]',
            _plain(ArgvTemplate.parse),
        ),
    )
    allowed_hosts: tuple[Origin, ...] = field(
        default=(),
        metadata=_key(
            "Outbound HTTP (WAGI 0.8's `wasi_experimental_http`): the origins (scheme, host, "
            "optional port) the module may call; empty or absent denies all. Loopback, "
            "link-local and metadata addresses only when listed as addresses; redirects are "
            "followed only within the list.",
            '["https://api.example.com", "http://127.0.0.1:8080"]',
            _plain(parse_allowed_hosts),
        ),
    )
    http_max_concurrency: int | None = field(
        default=None,
        metadata=_key(
            "Outbound HTTP responses a run may hold open at once (at most 64).",
            "4",
            _plain(parse_max_concurrency),
        ),
    )
    tmp: Scratch | None = field(
        default=None,
        metadata=_key(
            "A private, empty, writable directory per request (`true` for `/tmp`, or a guest "
            "path, or `{ path = ..., max_size = ... }`), removed after the request; what the "
            "module writes to files is bounded by `max_size` (default 64 MiB).",
            '{ path = "/tmp", max_size = "16 MiB" }',
            _EntryParser.scratch,
        ),
    )
    timeout: float | None = field(
        default=None,
        metadata=_key(
            "Seconds the module may run before the request gets 504 (overrides `--timeout`).",
            "5",
            _plain(parse_seconds),
        ),
    )
    max_memory: int | None = field(
        default=None,
        metadata=_key(
            'Linear memory the module may use, in bytes or as a string such as `"64 MiB"` '
            "(overrides `--max-memory`).",
            '"64 MiB"',
            _plain(parse_byte_size),
        ),
    )
    host: str | None = field(
        default=None,
        metadata=_key(
            "A virtual host: the route answers only requests for this host name (the `Host` "
            "header, or the trusted proxy's `X-Forwarded-Host`; any port; case-insensitive). "
            "The routes of the request's host are tried first, the most specific winning; "
            "routes without `host` answer every host. A DNS name, without port or scheme.",
            '"admin.example.com"',
            _plain(validate_host),
        ),
    )
    """Lowercase; ``None`` answers every host."""
    repository: object = field(
        default=None,
        compare=False,
        metadata=_key(
            "Reserved by the Rust WAGI (bindle); accepted and ignored.",
            '"example.com/app"',
            _plain(lambda value: value),
        ),
    )

    @property
    def label(self) -> str:
        """``[[module]] #2 (route '/x')``, for messages (prefix the file's path)."""
        return entry_label(self.index, self.route)


MODULE_KEYS: tuple[ModuleKey, ...] = tuple(
    dataclasses.replace(f.metadata["key"], name=f.name, default=f.default)
    for f in dataclasses.fields(ModuleEntry)
    if "key" in f.metadata
)
"""Every key a ``[[module]]`` table may hold, from :class:`ModuleEntry`'s fields: the
parser, the check of unknown keys and the configuration reference all come from here."""

_KNOWN_KEYS = frozenset(key.name for key in MODULE_KEYS)


def module_keys_table() -> str:
    """The ``[[module]]`` keys as a Markdown table, for the documentation."""
    rows = ["| key | meaning | example |", "|---|---|---|"]
    for key in MODULE_KEYS:
        name = f"`{key.name}`" + (" (required)" if key.required else "")
        cells = [name, key.meaning, f"`{key.name} = {key.example}`"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


@dataclass(frozen=True)
class Config:
    """A parsed ``modules.toml``."""

    path: Path
    modules: tuple[ModuleEntry, ...]


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
    seen: dict[tuple[str | None, str], int] = {}
    for index, table in enumerate(tables, start=1):
        entry = _EntryParser(path, base_dir, index, table).parse()
        first = seen.get((entry.host, entry.route))
        if first is not None:
            for_host = "" if entry.host is None else f" for host {entry.host!r}"
            raise ConfigError(
                f"{path}: {entry.label}, key 'route': duplicate "
                f"route{for_host}, already declared by {entry_label(first)}"
            )
        seen[(entry.host, entry.route)] = index
        entries.append(entry)
    return Config(path=path, modules=tuple(entries))


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
        if not sep or not ENV_NAME.fullmatch(name):
            raise ConfigError(f"{path}:{number}: expected NAME=value, got {line!r}")
        pairs.append((name, value))
    return tuple(pairs)
