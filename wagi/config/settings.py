"""Server options, each declared once.

Every option has one :class:`Setting`: its name, command-line flag, ``WAGI_*``
environment variable, default and parser. The ``wagi`` command line, the
environment read by ``gunicorn wagi.wsgi:app`` and the README's reference table
all come from :data:`SETTINGS` (the habit of gunicorn's ``config.py``).

``wagi serve --timeout 5`` and ``WAGI_TIMEOUT=5 gunicorn wagi.wsgi:app`` mean the
same thing: ``wagi serve`` passes its options to the workers as ``WAGI_*``
variables.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from wagi.engines import ENGINE_NAMES, EngineName


class Choice(str, Enum):
    """A value of a closed set of choices: a ``str`` that compares, formats and prints as
    the word it stands for, so ``WAGI_*`` variables and flags read and write it unchanged."""

    def __str__(self) -> str:
        return str(self.value)


class LogFormat(Choice):
    """``--log-format``."""

    TEXT = "text"
    JSON = "json"


class KernelWall(Choice):
    """``--kernel-wall``: whether Landlock walls the threads that run modules."""

    AUTO: Final = "auto"
    REQUIRED = "required"
    OFF = "off"


AUTO: Final = "auto"
"""``--engine auto``: let :func:`wagi.execution.engine_choice.choose_engine` pick from the
engines table."""

EngineSetting: TypeAlias = EngineName | Literal["auto"]
"""``--engine``: an engine, or ``auto``."""

ENGINE_CHOICES = (AUTO, *ENGINE_NAMES)
LOG_FORMATS = tuple(member.value for member in LogFormat)
KERNEL_WALL_CHOICES = tuple(member.value for member in KernelWall)

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_byte_size(value: str | int) -> int:
    """``"64 MiB"`` -> 67108864; a bare integer is a number of bytes.

    >>> parse_byte_size("1 KiB")
    1024
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"expected a size such as 1048576, '512 KiB' or '64 MiB', got {value!r}"
            )
        size = int(match.group(1)) * _UNITS[unit]
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


def parse_seconds(value: str | float) -> float:
    """A positive number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"a timeout must be a positive number of seconds, got {value!r}")
    return seconds


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A valid environment variable name (``--env``, ``--env-file``, ``environment``)."""


def parse_env_pair(value: str) -> tuple[str, str]:
    """``"NAME=value"`` -> ``("NAME", "value")``."""
    name, sep, val = value.partition("=")
    if not sep or not ENV_NAME.fullmatch(name):
        raise ValueError(f"expected NAME=value, got {value!r}")
    return name, val


def _parse_optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def _parse_hops(value: str) -> int:
    hops = int(value)
    if hops < 0:
        raise ValueError(f"expected 0 or more proxy hops, got {value!r}")
    return hops


def _parse_plain_http(value: str) -> str:
    """``"loopback, reg.lan:5000"`` -> ``"loopback,reg.lan:5000"``; ``""`` or ``none``: none."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if items == ["none"]:
        return ""
    for item in items:
        if item != "loopback" and not re.fullmatch(
            r"[A-Za-z0-9.-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?", item
        ):
            raise ValueError(
                f"expected registries as HOST[:PORT] separated by commas, or 'loopback', "
                f"got {item!r}"
            )
    return ",".join(items)


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _engine(value: str) -> EngineSetting:
    value = _one_of(ENGINE_CHOICES)(value)
    return AUTO if value == AUTO else EngineName(value)


def _engine_help() -> str:
    """``--engine``'s help, in the engines table's words and order."""
    *preferred, last = ENGINE_NAMES
    auto = "".join(f"{name} where it can honour the configuration, else " for name in preferred)
    return f"WebAssembly engine: {AUTO} ({auto}{last}), {', '.join(preferred)} or {last}."


def bind_address(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` -> ``("127.0.0.1", 9100)``; ``"[::1]:9100"`` -> ``("::1", 9100)``."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, such as 127.0.0.1:9100, got {value!r}")
    return host, int(port)


def _parse_optional_bind(value: str) -> str | None:
    if not value:
        return None
    bind_address(value)
    return value


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wagi"


@dataclass(frozen=True)
class Setting:
    """One server option: where it comes from and how it is parsed."""

    name: str
    flag: str
    help: str
    default: Any
    parse: Callable[[str], Any]
    metavar: str = "VALUE"
    repeatable: bool = False
    default_doc: str | None = None
    """How the default reads in help and docs, when ``str(default)`` would mislead."""

    @property
    def env_var(self) -> str:
        return "WAGI_" + self.name.upper()


SETTINGS: Sequence[Setting] = (
    Setting(
        "config",
        "--config",
        "Path of the modules.toml that maps routes to modules.",
        Path("modules.toml"),
        Path,
        metavar="PATH",
    ),
    Setting(
        "env",
        "--env",
        "Environment variable NAME=value for every module (repeatable; wins over --env-file). "
        "As WAGI_ENV: shell-quoted pairs separated by spaces.",
        (),
        parse_env_pair,
        metavar="NAME=value",
        repeatable=True,
    ),
    Setting(
        "env_file",
        "--env-file",
        "File of NAME=value lines passed to every module.",
        None,
        _parse_optional_path,
        metavar="PATH",
    ),
    Setting(
        "default_host",
        "--default-host",
        "Host (and port) used for SERVER_NAME/SERVER_PORT when a request has no Host header.",
        "localhost:3000",
        str,
        metavar="HOST[:PORT]",
    ),
    Setting(
        "log_dir",
        "--log-dir",
        "Directory for module stderr, one file per route; by default it goes to the error log.",
        None,
        _parse_optional_path,
        metavar="DIR",
    ),
    Setting(
        "cache_dir",
        "--cache-dir",
        "Directory of compiled modules and pulled OCI modules shared by the workers "
        "('' disables the cache, and OCI modules with it).",
        _default_cache_dir(),
        _parse_optional_path,
        metavar="DIR",
        default_doc="$XDG_CACHE_HOME/wagi or ~/.cache/wagi",
    ),
    Setting(
        "engine",
        "--engine",
        _engine_help(),
        AUTO,
        _engine,
        metavar="|".join(ENGINE_CHOICES),
    ),
    Setting(
        "timeout",
        "--timeout",
        "Seconds a module may run before the request gets 504 (per-module `timeout` wins).",
        30.0,
        parse_seconds,
        metavar="SECONDS",
    ),
    Setting(
        "max_memory",
        "--max-memory",
        "Linear memory a module may use, e.g. '256 MiB' (per-module `max_memory` wins); "
        "unset means the WebAssembly maximum.",
        None,
        lambda v: parse_byte_size(v) if v else None,
        metavar="SIZE",
    ),
    Setting(
        "max_body",
        "--max-body",
        "Largest request body accepted; larger bodies get 413.",
        10 * 1024**2,
        parse_byte_size,
        metavar="SIZE",
        default_doc="10 MiB",
    ),
    Setting(
        "max_response",
        "--max-response",
        "Largest output a module may write to stdout; more gives 500.",
        64 * 1024**2,
        parse_byte_size,
        metavar="SIZE",
        default_doc="64 MiB",
    ),
    Setting(
        "outbound_max_headers",
        "--outbound-max-headers",
        "Largest response header block a module's outbound HTTP request may receive; "
        "more fails the request.",
        64 * 1024,
        parse_byte_size,
        metavar="SIZE",
        default_doc="64 KiB",
    ),
    Setting(
        "outbound_max_body",
        "--outbound-max-body",
        "Largest response body a module's outbound HTTP request may receive; more fails "
        "the request.",
        16 * 1024**2,
        parse_byte_size,
        metavar="SIZE",
        default_doc="16 MiB",
    ),
    Setting(
        "trusted_proxy_hops",
        "--trusted-proxy-hops",
        "Number of reverse proxies in front of wagi whose X-Forwarded-For/-Proto/-Host/-Port "
        "headers are trusted (0 trusts none).",
        0,
        _parse_hops,
        metavar="N",
    ),
    Setting(
        "oci_ca_file",
        "--oci-ca-file",
        "PEM file of the certificate authorities trusted for OCI registries over HTTPS, "
        "instead of the system's.",
        None,
        _parse_optional_path,
        metavar="PATH",
    ),
    Setting(
        "oci_plain_http",
        "--oci-plain-http",
        "OCI registries reached over plain HTTP instead of HTTPS: HOST[:PORT] separated by "
        "commas, and 'loopback' for any on localhost, 127.0.0.0/8 or ::1 (as docker does); "
        "'none' for HTTPS everywhere.",
        "loopback",
        _parse_plain_http,
        metavar="REGISTRIES",
    ),
    Setting(
        "log_format",
        "--log-format",
        "How log lines are written: text, or json (one object per line, for log shippers: "
        "gunicorn's access and error logs, wagi's events and module stderr, with route, "
        "request id, engine, duration and ending).",
        LogFormat.TEXT,
        lambda value: LogFormat(_one_of(LOG_FORMATS)(value)),
        metavar="|".join(LOG_FORMATS),
    ),
    Setting(
        "metrics_bind",
        "--metrics-bind",
        "Serve Prometheus metrics at http://HOST:PORT/metrics, a port of their own (never "
        "through the module routes); unset serves none.",
        None,
        _parse_optional_bind,
        metavar="HOST:PORT",
    ),
    Setting(
        "kernel_wall",
        "--kernel-wall",
        "The second wall under the WebAssembly sandbox: Linux Landlock confines the threads "
        "that run modules to the volumes and what a run needs (docs/security.md). auto: up "
        "wherever the kernel has Landlock; required: refuse to start without it; off: none "
        "(then wasmer maps no volumes).",
        KernelWall.AUTO,
        lambda value: KernelWall(_one_of(KERNEL_WALL_CHOICES)(value)),
        metavar="|".join(KERNEL_WALL_CHOICES),
    ),
)


@dataclass(frozen=True)
class ServerSettings:
    """The parsed server options: only types here, defaults and meaning are in :data:`SETTINGS`.

    Build one with :func:`load`. Its fields are the settings' names, in the same order
    (tests/test_settings.py checks it).
    """

    config: Path
    env: tuple[tuple[str, str], ...]
    env_file: Path | None
    default_host: str
    log_dir: Path | None
    cache_dir: Path | None
    engine: EngineSetting
    timeout: float
    max_memory: int | None
    max_body: int
    max_response: int
    outbound_max_headers: int
    outbound_max_body: int
    trusted_proxy_hops: int
    oci_ca_file: Path | None
    oci_plain_http: str
    log_format: LogFormat
    metrics_bind: str | None
    kernel_wall: KernelWall


class SettingsError(ValueError):
    """An option has a value that cannot be parsed."""


def _parse(setting: Setting, raw: str, source: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{source}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Add one flag per setting (or per setting named in ``only``).

    Unset flags stay ``None`` so the environment can fill them.
    """
    for setting in SETTINGS:
        if only is not None and setting.name not in only:
            continue
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            metavar=setting.metavar,
            action="append" if setting.repeatable else "store",
            default=None,
            help=f"{setting.help} [env {setting.env_var}; default {_show(setting)}]",
        )


def _show(setting: Setting) -> str:
    if setting.default_doc is not None:
        return setting.default_doc
    if setting.default in (None, ()):
        return "unset"
    return str(setting.default)


def load(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServerSettings:
    """Settings from command-line ``args`` first, then ``WAGI_*`` variables, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
    for setting in SETTINGS:
        given = getattr(args, setting.name, None) if args is not None else None
        if given is not None:
            raw_items = given if setting.repeatable else [given]
            source = setting.flag
        elif setting.env_var in environ:
            text = environ[setting.env_var]
            raw_items = shlex.split(text) if setting.repeatable else [text]
            source = setting.env_var
        else:
            continue
        parsed = [_parse(setting, item, source) for item in raw_items]
        values[setting.name] = tuple(parsed) if setting.repeatable else parsed[0]
    return ServerSettings(**values)


def to_environ(settings: ServerSettings) -> dict[str, str]:
    """The ``WAGI_*`` variables that make a worker load these same settings."""
    out: dict[str, str] = {}
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        if setting.repeatable:
            out[setting.env_var] = " ".join(shlex.quote(f"{k}={v}") for k, v in value)
        elif value is None:
            out[setting.env_var] = ""
        else:
            out[setting.env_var] = str(value)
    return out


def reference_table() -> str:
    """The options as a Markdown table, for the README."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        cells = [f"`{s.flag} {s.metavar}`", f"`{s.env_var}`", _show(s), s.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)
