"""modules.toml parsing: every error path names the file, the entry and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from wagi.cgi.request import ArgvTemplate
from wagi.config import ConfigError, LocalModule, Volume, load_config, load_env_file

from ..support.servers import PROBE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "modules.toml"
    path.write_text(text)
    return path


def entry(extra: str = "", route: str = "/x") -> str:
    return f'[[module]]\nroute = "{route}"\nmodule = "{PROBE}"\n{extra}\n'


def test_minimal_entry_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, entry()))
    (module,) = config.modules
    assert module.route == "/x"
    assert module.module == LocalModule(PROBE)
    assert module.entrypoint == "_start"
    assert module.argv == ArgvTemplate.parse("${SCRIPT_NAME} ${ARGS}")
    assert module.volumes == ()
    assert module.environment == ()
    assert module.timeout is None and module.max_memory is None
    assert module.index == 1


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub" / "data").mkdir(parents=True)
    (tmp_path / "sub" / "m.wat").write_text("(module)")
    config = load_config(
        write(
            tmp_path / "sub",
            '[[module]]\nroute = "/x"\nmodule = "m.wat"\nvolumes = { "/data" = "data" }\n',
        )
    )
    assert config.modules[0].module == LocalModule(tmp_path / "sub" / "m.wat")
    assert config.modules[0].volumes == (Volume("/data", tmp_path / "sub" / "data", False),)


def test_full_entry(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    text = entry(
        'entrypoint = "hello"\n'
        'argv = "${SCRIPT_NAME} extra ${ARGS}"\n'
        'volumes = { "/ro" = { path = "ro", read_only = true } }\n'
        'environment.GREETING = "hi"\n'
        "timeout = 2.5\n"
        'max_memory = "64 MiB"\n'
        'repository = "ignored"\n'
        "allowed_hosts = []\n"
    )
    (module,) = load_config(write(tmp_path, text)).modules
    assert module.entrypoint == "hello"
    assert module.argv == ArgvTemplate.parse("${SCRIPT_NAME} extra ${ARGS}")
    assert module.volumes == (Volume("/ro", tmp_path / "ro", True),)
    assert module.environment == (("GREETING", "hi"),)
    assert module.timeout == 2.5
    assert module.max_memory == 64 * 1024 * 1024


def test_hosts_are_lowercase_and_one_route_may_serve_several_hosts(tmp_path: Path) -> None:
    text = entry() + entry('host = "Admin.Example.com"') + entry('host = "shop.example.com"')
    modules = load_config(write(tmp_path, text)).modules
    assert [(m.route, m.host) for m in modules] == [
        ("/x", None),
        ("/x", "admin.example.com"),
        ("/x", "shop.example.com"),
    ]


def test_file_url_module(tmp_path: Path) -> None:
    (module,) = load_config(write(tmp_path, entry().replace(str(PROBE), f"file://{PROBE}"))).modules
    assert module.module == LocalModule(PROBE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("route = [", "invalid TOML"),
        ("[server]\nport = 1\n", "unknown top-level key 'server'"),
        ("", "no [[module]] entries"),
        ('module = "x"', "'module' must be an array of tables"),
        ('[[module]]\nmodule = "m.wasm"\n', "[[module]] #1, key 'route': missing"),
        ('[[module]]\nroute = "/a"\n', "[[module]] #1 (route '/a'), key 'module': missing"),
        (entry(route="nope"), "key 'route': a route must start with '/'"),
        (entry(route="/a/.../b"), "key 'route': '...' may only end a route"),
        (entry(route="/a b"), "key 'route': a route cannot contain spaces"),
        (entry("colour = 1"), "(route '/x'), key 'colour': unknown key"),
        (entry("entrypoint = 3"), "key 'entrypoint': expected a non-empty string"),
        (entry('entrypoint = "a b"'), "key 'entrypoint': not a valid export name"),
        (entry('argv = ""'), "key 'argv': expected a non-empty string or a list of strings"),
        (entry("argv = []"), "key 'argv': expected a string or a non-empty list of strings"),
        (entry('argv = ["a", 1]'), "key 'argv': item 1 is not a string: 1"),
        (entry('argv = ["${PATH}"]'), "key 'argv': item 0 ('${PATH}'): unknown placeholder"),
        (entry("timeout = -1"), "key 'timeout': a timeout must be a positive number"),
        (entry('timeout = "soon"'), "key 'timeout': expected a number of seconds"),
        (entry('max_memory = "lots"'), "key 'max_memory': expected a size"),
        (entry("max_memory = 0"), "key 'max_memory': a size must be positive"),
        (entry('environment = "A=1"'), "key 'environment': expected a table"),
        (entry('environment = { "1A" = "x" }'), "key 'environment': '1A' is not a valid"),
        (entry("environment = { A = 1 }"), "key 'environment': A: expected a string"),
        (entry('volumes = ["/data"]'), "key 'volumes': expected a table"),
        (entry('volumes = { "data" = "." }'), "key 'volumes': guest path 'data' must be absolute"),
        (entry('volumes = { "/d" = "missing-dir" }'), "volume '/d': host directory 'missing-dir'"),
        (entry('volumes = { "/d" = { read_only = true } }'), "volume '/d': expected { path"),
        (
            entry('volumes = { "/d" = { path = ".", read_only = "yes" } }'),
            "volume '/d': read_only must be true/false",
        ),
        (
            entry() + entry(),
            "[[module]] #2 (route '/x'), key 'route': duplicate route, already "
            "declared by [[module]] #1",
        ),
        (
            entry('host = "a.example"') + entry('host = "A.example."'),
            "[[module]] #2 (route '/x'), key 'route': duplicate route for host 'a.example', "
            "already declared by [[module]] #1",
        ),
        (
            entry('host = "a.example:80"'),
            "(route '/x'), key 'host': a host is a name without a port",
        ),
        (entry('host = "http://a.example"'), "key 'host': a host is a name without scheme"),
        (entry('host = "*.example"'), "key 'host': expected a DNS name"),
        (entry("host = 1"), "key 'host': expected a host name"),
        (
            entry('volumes = { "/tmp" = "." }\ntmp = true'),
            "(route '/x'), key 'tmp': '/tmp' is already a volume",
        ),
        (
            '[[module]]\nroute = "/m"\nmodule = "missing.wasm"\n',
            "key 'module': module file 'missing.wasm'",
        ),
        (
            '[[module]]\nroute = "/m"\nmodule = "modules.toml"\n',
            "key 'module': expected a .wasm or .wat file",
        ),
        (
            '[[module]]\nroute = "/m"\nmodule = "https://example.com/m.wasm"\n',
            "only plain paths, file:// URLs and oci:// references are supported",
        ),
    ],
)
def test_errors_name_file_entry_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:")
    assert expected in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")


def test_env_file(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text("# comment\n\nA=1\nB = two words\nC=x=y\n")
    assert load_env_file(path) == (("A", "1"), ("B", " two words"), ("C", "x=y"))
    path.write_text("A=1\nnot a pair\n")
    with pytest.raises(ConfigError, match=r"env:2: expected NAME=value"):
        load_env_file(path)
    with pytest.raises(ConfigError, match="cannot read environment file"):
        load_env_file(tmp_path / "missing")
