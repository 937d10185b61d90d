"""Property-based tests: arbitrary input gives only the documented answers.

Three places take input that wagi does not control: a module's stdout (the CGI
response parser), ``modules.toml`` (the configuration loader) and the HTTP
request (the CGI request builder). For each, hypothesis generates inputs, from
plain noise to nearly-valid documents, and checks the contract:

- the response parser returns a :class:`CgiResponse` or raises
  :class:`BadCgiResponse`, nothing else; a valid response round-trips exactly;
  :func:`split_head` on any prefix of an output agrees with the whole;
- the configuration loader returns a :class:`Config` or raises
  :class:`ConfigError` whose message names the file (and the entry and key
  when one is involved), nothing else;
- the request builder gives argv items without whitespace, split as documented,
  a percent-decoded ``PATH_INFO``, no hidden header, and only ``str`` values.
"""

from __future__ import annotations

import contextlib
import re
import string
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from tests.support.servers import PROBE
from wagi.cgi.request import HIDDEN_HEADERS, build_argv, cgi_variables, raw_path_and_query
from wagi.cgi.response import (
    DROPPED_HEADERS,
    BadCgiResponse,
    CgiResponse,
    parse_cgi_response,
    parse_head,
    split_head,
)
from wagi.config import DEFAULT_ARGV, Config, ConfigError, load_config, parse_config
from wagi.routing import Route

# Fast and deterministic enough for every run: no deadline (a shared, noisy machine),
# a bounded number of examples per property.
FAST = settings(
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOWER = settings(FAST, max_examples=100)

TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# -- the CGI response parser ---------------------------------------------------------

# Pieces a module's output is made of, so that noise often gets past the first checks.
_PIECES = [
    b"Status: ",
    b"status:",
    b"200",
    b"404 Not Found",
    b"100",
    b"1000",
    b"Content-Type: text/plain",
    b"Location: /x",
    b"Content-Length: 5",
    b"Transfer-Encoding: chunked",
    b"X-A: ",
    b": ",
    b":",
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\x85",
]
module_output = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=8)), max_size=30).map(b"".join),
)


@FAST
@given(module_output)
def test_any_output_is_a_response_or_bad_cgi_response(output: bytes) -> None:
    try:
        response = parse_cgi_response(output)
    except BadCgiResponse as exc:
        assert str(exc)  # says why, for the log
        return
    assert isinstance(response, CgiResponse)
    assert 200 <= response.status <= 599
    assert output.endswith(response.body)
    for name, value in response.headers:
        assert _TOKEN.fullmatch(name)
        assert name.lower() not in DROPPED_HEADERS and name.lower() != "status"
        assert not _CONTROL.search(value)
        assert value == value.strip(" \t")
        value.encode("latin-1")  # every value goes out through WSGI as latin-1


_RESERVED = DROPPED_HEADERS | {"status", "content-type", "location"}
header_name = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in _RESERVED
)
# Values as a module may write them: any latin-1 byte but control characters, and no
# leading or trailing blanks (the parser strips those).
header_value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=20,
).map(lambda v: v.strip(" \t"))
reason = st.text(string.ascii_letters + string.digits + " -", max_size=20).map(str.strip)


@st.composite
def valid_response(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A CGI response and what parsing it must give."""
    headers = draw(st.lists(st.tuples(header_name, header_value), max_size=6))
    # A few repeated headers (several Set-Cookie), in place.
    if headers and draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), headers[0])
    special = draw(
        st.lists(
            st.sampled_from(["Content-Type", "content-type", "Location", "LOCATION"]),
            max_size=2,
        )
    )
    for name in special:
        headers.insert(draw(st.integers(0, len(headers))), (name, draw(header_value)))
    status = draw(st.none() | st.integers(200, 599))
    why = draw(reason) if status is not None else ""
    if status is None and not special:
        headers.insert(0, ("Content-Type", "text/plain"))
    lines = [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if status is not None:
        status_line = f"Status: {status} {why}".rstrip().encode()
        lines.insert(draw(st.integers(0, len(lines))), status_line)
    n = len(lines) + 1
    ends = draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=n, max_size=n))
    body = draw(st.binary(max_size=200))
    output = (
        b"".join(line + end for line, end in zip(lines, ends[:-1], strict=True))
        + ends[len(lines)]
        + body
    )
    if status is None:
        has_location = any(name.lower() == "location" for name, _ in headers)
        status = 302 if has_location else 200
    expected = {"status": status, "reason": why or None, "headers": headers, "body": body}
    return output, expected


@FAST
@given(valid_response())
def test_a_valid_response_round_trips(case: tuple[bytes, dict[str, Any]]) -> None:
    output, expected = case
    r = parse_cgi_response(output)
    assert {"status": r.status, "reason": r.reason, "headers": r.headers, "body": r.body} == (
        expected
    )


@FAST
@given(module_output | valid_response().map(lambda case: case[0]))
def test_split_head_on_any_prefix_agrees_with_the_whole(output: bytes) -> None:
    whole = split_head(output)
    for cut in range(len(output) + 1):
        part = split_head(output[:cut])
        if part is None:
            continue
        assert whole is not None
        assert part[0] == whole[0], f"head of the first {cut} bytes differs"
        assert whole[1].startswith(part[1])
        # And the streamed parse agrees with the whole-output parse.
        try:
            streamed: object = parse_head(part[0])
        except BadCgiResponse:
            streamed = BadCgiResponse
        try:
            full = parse_cgi_response(output)
            assert streamed == parse_head(whole[0])
            assert (full.status, full.headers) == (streamed.status, streamed.headers)  # type: ignore[attr-defined]
        except BadCgiResponse:
            assert streamed is BadCgiResponse


# -- the configuration loader --------------------------------------------------------


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a real module, a WAT file, a data directory and a symlink."""
    directory = tmp_path_factory.mktemp("config")
    (directory / "probe.wasm").write_bytes(PROBE.read_bytes())
    (directory / "hello.wat").write_text('(module (func (export "_start")))')
    (directory / "data").mkdir()
    (directory / "link.wasm").symlink_to(directory / "probe.wasm")
    (directory / "loop.wasm").symlink_to(directory / "loop.wasm")
    return directory


toml_scalar = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.datetimes(),
    st.dates(),
)
toml_value = st.recursive(
    toml_scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
route = st.one_of(
    st.sampled_from(["/", "/a", "/a/...", "/...", "/a/b/...", "/x${ARGS}", "/a...", ""]),
    st.text(max_size=10),
    st.text(max_size=8).map(lambda s: "/" + s),
)
path_like = st.one_of(
    st.sampled_from(
        [
            "probe.wasm",
            "hello.wat",
            "link.wasm",
            "loop.wasm",
            "data",
            "missing.wasm",
            "file:///nonexistent/x.wasm",
            "file://elsewhere/x.wasm",
            "file://[bad/x.wasm",
            "http://h/x.wasm",
            "/dev/null",
            "..",
            "a\0.wasm",
            "x" * 300 + ".wasm",
            "/".join(["d" * 200] * 25) + ".wasm",
            "",
        ]
    ),
    st.text(max_size=15),
)
volume_spec = st.one_of(
    path_like,
    st.fixed_dictionaries(
        {"path": path_like},
        optional={"read_only": st.booleans() | toml_scalar, "extra": toml_scalar},
    ),
    toml_value,
)
entry_values: dict[str, st.SearchStrategy[Any]] = {
    "route": route,
    "module": path_like,
    "entrypoint": st.sampled_from(["_start", "", " ", "a b", "x"]) | st.text(max_size=6),
    "volumes": st.dictionaries(
        st.sampled_from(["/d", "d", "/", ""]) | st.text(max_size=4), volume_spec, max_size=2
    ),
    "environment": st.dictionaries(
        st.sampled_from(["A", "_B", "1X", "", "A-B"]) | st.text(max_size=4),
        st.text(max_size=6) | toml_scalar,
        max_size=2,
    ),
    "argv": st.text(max_size=10),
    "timeout": st.sampled_from([1, 0, -1, 0.5, "5", "x", float("inf"), True]) | toml_scalar,
    "max_memory": st.sampled_from([1, 0, "64 MiB", "1 XiB", 2**62, "", True]) | toml_scalar,
    "allowed_hosts": st.lists(st.text(max_size=5), max_size=2),
    "http_max_concurrency": st.integers(0, 4),
    "repository": toml_scalar,
    "unknown": toml_scalar,
}


@st.composite
def module_table(draw: st.DrawFn) -> dict[str, Any]:
    """A good entry with a few keys changed, added or removed: errors deep inside too."""
    table: dict[str, Any] = {
        "route": draw(st.sampled_from(["/a", "/b/...", "/..."])),
        "module": draw(st.sampled_from(["probe.wasm", "hello.wat", "link.wasm"])),
    }
    for key in draw(st.lists(st.sampled_from(sorted(entry_values)), max_size=3)):
        table[key] = draw(entry_values[key] | toml_value)
    for key in draw(st.sets(st.sampled_from(["route", "module"]), max_size=1)):
        if draw(st.integers(0, 3)) == 0:
            del table[key]  # sometimes missing
    return table


config_document = st.one_of(
    st.fixed_dictionaries({"module": st.lists(module_table(), max_size=4)}),
    st.dictionaries(st.sampled_from(["module", "modules", "x"]), toml_value, max_size=2),
)
_ENTRY = re.compile(r"\[\[module\]\] #(\d+)")


def assert_config_error(exc: ConfigError, path: Path) -> None:
    message = str(exc)
    assert message.startswith(f"{path}: "), message
    entry = _ENTRY.search(message)
    if entry:  # about one entry: it names the key too
        assert re.search(r", key ('.*'|\".*\")", message), message  # as written, repr'd
    assert "\n" not in message, "one message, one line"


@SLOWER
@given(config_document)
@example({"module": [{"route": "/a", "module": "a\0.wasm"}]})
@example({"module": [{"": 1, "route": "/a", "module": "probe.wasm"}]})
@example({"module": [{"route": "/a", "module": "file://[bad/x.wasm"}]})
@example({"module": [{"route": "/a", "module": "loop.wasm"}]})
@example({"module": [{"route": "/a", "module": "/".join(["d" * 200] * 25) + ".wasm"}]})
@example({"module": [{"route": "/a", "module": "probe.wasm", "volumes": {"/d": "x" * 300}}]})
def test_parse_config_gives_a_config_or_a_config_error(
    config_dir: Path, document: dict[str, Any]
) -> None:
    path = config_dir / "modules.toml"
    try:
        config = parse_config(document, path)
    except ConfigError as exc:
        assert_config_error(exc, path)
        return
    assert isinstance(config, Config)
    assert [m.index for m in config.modules] == list(range(1, len(config.modules) + 1))
    for entry in config.modules:
        assert entry.module.path.is_file()
        assert all(v.host_path.is_dir() for v in entry.volumes)


# TOML-looking text: mostly valid lines, some broken ones.
toml_line = st.one_of(
    st.sampled_from(
        [
            "[[module]]",
            'route = "/a"',
            'route = "/a/..."',
            'module = "probe.wasm"',
            'module = "hello.wat"',
            "timeout = 0",
            'max_memory = "1 KiB"',
            'volumes = { "/d" = "data" }',
            'volumes = { "/d" = { path = "data", read_only = "yes" } }',
            'environment.A = "1"',
            "[module]",
            "[x]",
            "a = [[[[[[[[",
            "a = " + "[" * 600 + "]" * 600,
            "a = " + "{b=" * 600 + "1" + "}" * 600,
            '"\\ud800" = 1',
            "= 1",
        ]
    ),
    st.text(max_size=20),
)
config_text = st.one_of(
    st.lists(toml_line, max_size=8).map("\n".join).map(str.encode),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),
)


@SLOWER
@given(config_text)
@example(b"\x80")
@example(b"a = " + b"[" * 600 + b"]" * 600)
@example(b"a = " + b"{b=" * 600 + b"1" + b"}" * 600)
def test_load_config_on_any_text_gives_a_config_or_a_config_error(
    config_dir: Path, text: bytes
) -> None:
    path = config_dir / "modules.toml"
    path.write_bytes(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert_config_error(exc, path)


def test_load_config_names_the_file_when_it_cannot_be_read(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.toml", tmp_path, tmp_path / "a\0b.toml"):
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}: ")


# -- the CGI request builder ---------------------------------------------------------

query_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("&=% \t+"),
    max_size=40,
)
script_names = st.sampled_from(["/env", "", "/a/b", "/x${ARGS}", "/${SCRIPT_NAME}"])


@FAST
@given(script_names, query_text, st.sampled_from([DEFAULT_ARGV, "${ARGS}", "x ${SCRIPT_NAME}"]))
@example("/x${ARGS}", "a=1", DEFAULT_ARGV)  # a route holding a placeholder is not expanded
def test_argv_is_the_documented_split_and_has_no_whitespace(
    script_name: str, query: str, template: str
) -> None:
    argv = build_argv(template, script_name, query)
    assert all(item and not any(c.isspace() for c in item) for item in argv)
    args = [word for item in query.split("&") for word in item.split()] if query else []
    expected = {
        DEFAULT_ARGV: [*script_name.split(), *args],
        "${ARGS}": args,
        "x ${SCRIPT_NAME}": ["x", *script_name.split()],
    }[template]
    assert argv == expected


@FAST
@given(st.text(max_size=30), script_names, query_text)
def test_argv_from_any_template_has_no_whitespace(
    template: str, script_name: str, query: str
) -> None:
    argv = build_argv(template, script_name, query)
    assert all(item and not any(c.isspace() for c in item) for item in argv)


# Raw paths as clients send them: safe characters, percent escapes (valid or not,
# %00 included, UTF-8 or not), non-ASCII text.
path_piece = st.one_of(
    st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/", max_size=6),
    st.sampled_from(["%2F", "%20", "%00", "%", "%zz", "%E2%82%AC", "%FF", "%C3", "%25"]),
    st.text(
        st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"], exclude_characters="?#"),
        max_size=3,
    ),
)
raw_path = st.lists(path_piece, max_size=8).map(lambda parts: "/" + "".join(parts))
header_names = st.one_of(
    st.sampled_from(
        [
            "Authorization",
            "authorization",
            "Proxy-Authorization",
            "Proxy",
            "proxy",
            "Connection",
            "Content-Type",
            "X-Forwarded-For",
            "Host",
            "Cookie",
        ]
    ),
    st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=10),
)
wsgi_value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=20,
)
query_chars = st.text(string.ascii_letters + string.digits + "&=%+-._~/?:@!$'()*,;", max_size=30)


@st.composite
def request_case(draw: st.DrawFn) -> tuple[dict[str, Any], str, str, list[tuple[str, str]]]:
    path = draw(raw_path)
    query = draw(query_chars)
    headers = draw(st.lists(st.tuples(header_names, wsgi_value), max_size=6))
    builder = EnvironBuilder(
        path=path,
        query_string=query,
        method=draw(st.sampled_from(["GET", "POST", "PUT"])),
        headers=headers,
        base_url=draw(st.sampled_from(["http://example.com", "https://h:8443"])),
    )
    environ = builder.get_environ()
    environ["REMOTE_ADDR"] = "127.0.0.1"
    # gunicorn's RAW_URI is the request target as sent, query included (the test builder's
    # leaves the query out).
    environ["RAW_URI"] = environ["RAW_URI"] + ("?" + query if query else "")
    return environ, path, query, headers


route_bases = st.sampled_from(["", "/a", "/%", "/x${ARGS}"])


@FAST
@given(request_case(), route_bases)
def test_cgi_variables_for_any_request(
    case: tuple[dict[str, Any], str, str, list[tuple[str, str]]], base: str
) -> None:
    environ, path, query, headers = case
    raw, raw_query = raw_path_and_query(environ)
    # The raw path is the client's, undecoded (UTF-8 travels as latin-1 in WSGI).
    assert raw == path.encode("utf-8").decode("latin-1")
    assert raw_query == query
    route = Route(base + "/...", None, (1, 0))
    if not route.matches(raw):
        raw = base + raw
        path = base + path
    script_name, raw_path_info = route.split(raw)
    env = cgi_variables(
        environ,
        raw_path=raw,
        query=raw_query,
        script_name=script_name,
        raw_path_info=raw_path_info,
        matched_route=route.pattern,
        body_length=0,
        default_host="localhost:3000",
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    assert not HIDDEN_HEADERS & set(env)
    assert env["PATH_INFO"] == env["PATH_TRANSLATED"] == unquote(path[len(base) :])
    assert env["SCRIPT_NAME"] == script_name
    assert env["QUERY_STRING"] == query
    argv = build_argv(DEFAULT_ARGV, script_name, raw_query)
    assert argv == [*script_name.split(), *(w for i in query.split("&") for w in i.split())]
    authorization = [v for n, v in headers if n.lower() == "authorization"]
    if not authorization:
        assert env["AUTH_TYPE"] == ""
    elif len(authorization) == 1:  # the scheme only, never the credentials
        scheme = authorization[0].split(" ", 1)[0]
        # like every value: the bytes as UTF-8 text where they are UTF-8
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            scheme = scheme.encode("latin-1").decode("utf-8")
        assert env["AUTH_TYPE"] == scheme
