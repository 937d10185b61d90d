"""What the operator configured, read once at start-up into typed objects.

- :mod:`wagi.config.modules_toml`: ``modules.toml`` -> :class:`Config` (its
  :class:`ModuleEntry` objects), or one :class:`ConfigError` naming file, entry and key;
- :mod:`wagi.config.settings`: every server option, declared once (flag, ``WAGI_*``
  variable, default, parser);
- :mod:`wagi.config.references`, :mod:`wagi.config.sources` and :mod:`wagi.config.registry`:
  where a module comes from, a local file or an OCI registry (pulled and verified at
  start-up).

This package re-exports the face of ``modules.toml`` (``from wagi.config import
load_config``), as Werkzeug's ``routing`` package does for its rules and map.
"""

from wagi.cgi.request import DEFAULT_ARGV
from wagi.config.modules_toml import (
    DEFAULT_ENTRYPOINT,
    DEFAULT_TMP_MAX_SIZE,
    DEFAULT_TMP_PATH,
    MODULE_KEYS,
    MODULE_SUFFIXES,
    Config,
    ConfigError,
    ModuleEntry,
    ModuleKey,
    Scratch,
    Volume,
    entry_label,
    load_config,
    load_env_file,
    module_keys_table,
    parse_config,
)
from wagi.config.references import LocalModule, ModuleSource, OciModule, parse_oci_reference

__all__ = [
    "DEFAULT_ARGV",
    "DEFAULT_ENTRYPOINT",
    "DEFAULT_TMP_MAX_SIZE",
    "DEFAULT_TMP_PATH",
    "MODULE_KEYS",
    "MODULE_SUFFIXES",
    "Config",
    "ConfigError",
    "LocalModule",
    "ModuleEntry",
    "ModuleKey",
    "ModuleSource",
    "OciModule",
    "Scratch",
    "Volume",
    "entry_label",
    "load_config",
    "load_env_file",
    "module_keys_table",
    "parse_config",
    "parse_oci_reference",
]
