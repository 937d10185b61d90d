"""Server options: flags, WAGI_* variables and defaults come from one declaration."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from wagi.cgi.request import ArgvTemplate, build_argv
from wagi.config import settings
from wagi.engines import ENGINE_NAMES, ENGINES, EngineName, engine_class, importable

from ..support.servers import ROOT


def parse(argv: list[str], environ: dict[str, str] | None = None) -> settings.ServerSettings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.load(parser.parse_args(argv), environ or {})


def test_defaults() -> None:
    s = parse([])
    assert s.config == Path("modules.toml")
    assert s.engine == "auto"
    assert s.timeout == 30.0
    assert s.max_body == 10 * 1024 * 1024
    assert s.env == ()


def test_flags_win_over_environment() -> None:
    s = parse(
        ["--timeout", "5", "--env", "A=1", "--env", "B=x y"],
        {"WAGI_TIMEOUT": "9", "WAGI_ENV": "C=3", "WAGI_MAX_BODY": "1 KiB"},
    )
    assert s.timeout == 5.0
    assert s.env == (("A", "1"), ("B", "x y"))
    assert s.max_body == 1024


def test_environment_round_trip() -> None:
    s = parse(
        [
            "--env",
            "A=two words",
            "--max-memory",
            "64 MiB",
            "--engine",
            "wasmtime",
            "--log-dir",
            "/tmp/logs",
            "--cache-dir",
            "",
        ]
    )
    again = settings.load(None, settings.to_environ(s))
    assert again == s
    assert again.cache_dir is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--timeout", "0"], "--timeout: a timeout must be a positive number"),
        (["--engine", "v8"], "--engine: expected one of auto, wasmer, wasmtime"),
        (["--max-body", "big"], "--max-body: expected a size"),
        (["--env", "novalue"], "--env: expected NAME=value"),
        (["--trusted-proxy-hops", "-1"], "--trusted-proxy-hops: expected 0 or more"),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(settings.SettingsError, match=message):
        parse(argv)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(settings.SettingsError, match="WAGI_TIMEOUT: expected a number"):
        parse([], {"WAGI_TIMEOUT": "soon"})


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1", 1), ("2k", 2000), ("3 KiB", 3072), ("64 MiB", 64 << 20), ("1GiB", 1 << 30), (7, 7)],
)
def test_byte_sizes(size: str | int, expected: int) -> None:
    assert settings.parse_byte_size(size) == expected


@pytest.mark.parametrize(
    ("template", "query", "argv"),
    [
        ("${SCRIPT_NAME} ${ARGS}", "greet=matt&foo=bar", ["/env", "greet=matt", "foo=bar"]),
        ("${SCRIPT_NAME} ${ARGS}", "", ["/env"]),
        ("${SCRIPT_NAME} ${ARGS}", "a=1&&b=%20x&", ["/env", "a=1", "b=%20x"]),
        ("${SCRIPT_NAME} --flag ${ARGS}", "x", ["/env", "--flag", "x"]),
        ("prog", "ignored", ["prog"]),
    ],
)
def test_argv_template(template: str, query: str, argv: list[str]) -> None:
    assert build_argv(template, "/env", query) == argv


@pytest.mark.parametrize(
    ("template", "query", "argv"),
    [
        (
            ["tool", "-p", "read x; run y", "${ARGS}"],
            "a=1&b",
            ["tool", "-p", "read x; run y", "a=1", "b"],
        ),
        (["tool", "${ARGS}", "last"], "", ["tool", "last"]),
        (["${SCRIPT_NAME}", "", " spaced "], "x", ["/env", "", " spaced "]),
        (["run ${SCRIPT_NAME}.wasm", "--q=${ARGS}"], "a&b", ["run /env.wasm", "--q=a b"]),
        (["$HOME", "${ARGS"], "x", ["$HOME", "${ARGS"]),
    ],
)
def test_argv_list_template(template: list[str], query: str, argv: list[str]) -> None:
    assert ArgvTemplate.parse(template).expand("/env", query) == argv


def test_argv_placeholders_are_substituted_once() -> None:
    # A script name holding a placeholder's text is not expanded again.
    template = ArgvTemplate.parse(["x=${SCRIPT_NAME}", "${ARGS}"])
    assert template.expand("/a${ARGS}", "q") == ["x=/a${ARGS}", "q"]


def test_reference_table_lists_every_setting() -> None:
    table = settings.reference_table()
    for s in settings.SETTINGS:
        assert s.flag in table and s.env_var in table


def test_server_settings_has_one_field_per_setting_in_order() -> None:
    # ServerSettings declares only types; SETTINGS declares the rest. They must agree.
    assert [s.name for s in settings.SETTINGS] == [
        f.name for f in dataclasses.fields(settings.ServerSettings)
    ]


@pytest.mark.parametrize(
    ("flag", "value", "member"),
    [
        ("--engine", "auto", "auto"),
        ("--engine", "wasmtime", EngineName.WASMTIME),
        ("--engine", "wasmer", EngineName.WASMER),
        ("--log-format", "json", settings.LogFormat.JSON),
        ("--kernel-wall", "required", settings.KernelWall.REQUIRED),
        ("--kernel-wall", "off", settings.KernelWall.OFF),
    ],
)
def test_closed_sets_parse_to_members_that_read_as_their_words(
    flag: str, value: str, member: object
) -> None:
    s = parse([flag, value])
    parsed = getattr(s, flag.removeprefix("--").replace("-", "_"))
    assert parsed == member == value and type(parsed) is type(member)
    assert (str(parsed), f"{parsed}") == (value, value)
    assert settings.to_environ(s)["WAGI_" + flag[2:].upper().replace("-", "_")] == value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log-format", "xml"], "--log-format: expected one of text, json, got 'xml'"),
        (["--kernel-wall", "on"], "--kernel-wall: expected one of auto, required, off, got 'on'"),
    ],
)
def test_closed_sets_refuse_other_words(argv: list[str], message: str) -> None:
    with pytest.raises(settings.SettingsError, match=re.escape(message)):
        parse(argv)


def test_engine_help_reads_the_engines_table() -> None:
    (engine,) = [s for s in settings.SETTINGS if s.name == "engine"]
    assert engine.help == (
        "WebAssembly engine: auto (wasmer where it can honour the configuration, else "
        "wasmtime), wasmer or wasmtime."
    )
    assert engine.metavar == "auto|wasmer|wasmtime"


def test_engine_names_are_declared_only_in_the_engines_table() -> None:
    # Settings, policy and their messages read the names from wagi.engines.ENGINES.
    for module in (
        "config/settings.py",
        "execution/engine_choice.py",
        "config/modules_toml.py",
        "cli.py",
    ):
        text = (ROOT / "wagi" / module).read_text()
        for name in ENGINE_NAMES:
            assert f'"{name}"' not in text and f"'{name}'" not in text, (module, name)
    assert [spec.name for spec in ENGINES] == list(EngineName)
    for name in ENGINE_NAMES:
        if importable(name)[0]:
            assert engine_class(name).name == name
