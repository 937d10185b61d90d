"""WASI 0.2 command components (``wasi:cli/run``) on wasmtime, through real gunicorn.

- The samples: Python (componentize-py), JavaScript (componentize-js) and C through the
  preview 1 adapter answer exactly, through the server and through ``wagi run``.
- The probe as a component answers like the probe as a core module where the conformance
  suite (tests/test_conformance.py, which runs it too) does not reach: volumes read-only and
  read-write, the memory limit, a ``run`` that returns an error, a replaced module file.
- What start-up refuses, saying so: an import wagi does not provide or cannot confine,
  ``entrypoint`` or ``tmp`` on a component, and every component on wasmer.
- The private C API this relies on is the one wagi was written for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from wagi.config import load_config
from wagi.engines.wasmtime import component as wasmtime_component
from wagi.execution.engine_choice import choose_engine, refusals

from ..support.servers import (
    ENGINES,
    MODULES,
    PROBE,
    ROOT,
    SAMPLES,
    Server,
    split_response,
    start_gunicorn,
    write_config,
)

PROBE_COMPONENT = MODULES / "probe.component.wasm"

CONFIG = """
[[module]]
route = "/notes/..."
module = "{samples}/notes/notes.wasm"
volumes = {{ "/pages" = {{ path = "{samples}/notes/pages", read_only = true }} }}

[[module]]
route = "/words"
module = "{samples}/words/words.wasm"

[[module]]
route = "/env/..."
module = "{samples}/env.wasm"
environment = {{ GREETING = "hi" }}

[[module]]
route = "/envc/..."
module = "{samples}/env.component.wasm"
environment = {{ GREETING = "hi" }}

[[module]]
route = "/core/..."
module = "{probe}"
volumes = {{ "/ro" = {{ path = "@DATA@/ro", read_only = true }}, "/rw" = "@DATA@/rw-core" }}
max_memory = "16MiB"

[[module]]
route = "/comp/..."
module = "{modules}/probe.component.wasm"
volumes = {{ "/ro" = {{ path = "@DATA@/ro", read_only = true }}, "/rw" = "@DATA@/rw-comp" }}
max_memory = "16MiB"

[[module]]
route = "/fails"
module = "@DATA@/fails.wat"
"""


def command_wat(imports: str = "", returns: int = 0, run: bool = True) -> str:
    """A component in WebAssembly text: ``imports``, and a ``wasi:cli/run`` whose ``run``
    returns ok (0) or err (1)."""
    export = f"""
      (core module $m (func (export "run") (result i32) i32.const {returns}))
      (core instance $i (instantiate $m))
      (func $run (result (result)) (canon lift (core func $i "run")))
      (instance $runs (export "run" (func $run)))
      (export "wasi:cli/run@0.2.0" (instance $runs))"""
    return f"(component {imports} {export if run else ''})"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name in ("ro", "rw-core", "rw-comp"):
        (root / name).mkdir()
    (root / "ro" / "a.txt").write_text("read me")
    (root / "fails.wat").write_text(command_wat(returns=1))
    return root


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact cache holding the component samples, compiled once for this module's
    servers: CPython and SpiderMonkey take wasmtime about 20 s of CPU to compile, more
    than a loaded machine leaves a server to become healthy."""
    cache = tmp_path_factory.mktemp("compiled")
    result = wagi("check", "--config", str(SAMPLES / "components.toml"), cache=cache, timeout=900)
    assert result.returncode == 0, result.stderr
    return cache


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., Server], data: Path, compiled: Path) -> Server:
    return server_factory(
        CONFIG.replace("@DATA@", str(data)),
        "wasmtime",
        workers=1,
        extra_env={"WAGI_CACHE_DIR": str(compiled)},
    )


def answer(server: Server, request: bytes) -> tuple[bytes, bytes]:
    """The status line and headers (as one block) and the body of a raw request's answer."""
    return split_response(server.raw(request))


# ----------------------------------------------------------------- the samples

PAGE_HEAD = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{}</title>\n'
    "<style>body{{font-family:sans-serif;max-width:42em;margin:2em auto;line-height:1.5}}"
    "pre{{background:#eee;padding:.5em}}table{{border-collapse:collapse}}"
    "td,th{{border:1px solid #ccc;padding:.2em .5em}}</style>\n</head>\n<body>\n"
)
PAGE_TAIL = "\n</body>\n</html>\n"

NOTES = [
    (
        "/notes",
        200,
        "text/html; charset=utf-8",
        PAGE_HEAD.format("Notes") + "<h1>Notes</h1>\n<ul>\n"
        '<li><a href="/notes/about">about</a></li>\n'
        '<li><a href="/notes/welcome">welcome</a></li>\n</ul>' + PAGE_TAIL,
    ),
    (
        "/notes/welcome",
        200,
        "text/html; charset=utf-8",
        PAGE_HEAD.format("welcome") + "<h1>Welcome</h1>\n"
        "<p>These notes are Markdown files in a <strong>read-only volume</strong>, rendered by "
        "a Python\nprogram that wagi runs as a WebAssembly component, fresh for every request."
        '</p>\n<ul>\n<li><a href="about">About wagi</a></li>\n'
        "<li>Send your own Markdown: <code>curl --data-binary @file.md "
        "http://127.0.0.1:3000/notes/preview</code></li>\n</ul>" + PAGE_TAIL,
    ),
    (
        "/notes/about",
        200,
        "text/html; charset=utf-8",
        PAGE_HEAD.format("about") + "<h1>About</h1>\n<table>\n<thead>\n<tr>\n<th>part</th>\n"
        "<th>what it is</th>\n</tr>\n</thead>\n<tbody>\n<tr>\n<td>wagi</td>\n"
        "<td>a WSGI app under gunicorn that runs WASI programs CGI-style</td>\n</tr>\n<tr>\n"
        "<td>this page</td>\n<td><code>pages/about.md</code>, rendered by <code>app.py</code> "
        "with Python-Markdown</td>\n</tr>\n</tbody>\n</table>\n"
        "<pre><code>GET /notes/about\n</code></pre>" + PAGE_TAIL,
    ),
    ("/notes/nope", 404, "text/plain; charset=utf-8", "no page 'nope'\n"),
    ("/notes/..%2Fapp", 404, "text/plain; charset=utf-8", "no page '../app'\n"),
]


def status_and_type(head: bytes) -> tuple[int, str]:
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers["Content-Type"]


@pytest.mark.parametrize(("path", "status", "content_type", "body"), NOTES)
def test_python_notes_render_the_volume(
    server: Server, path: str, status: int, content_type: str, body: str
) -> None:
    head, got = answer(
        server, f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
    )
    assert (status_and_type(head), got.decode()) == ((status, content_type), body)


def test_python_notes_preview_a_posted_body(server: Server) -> None:
    r = server.post("/notes/preview", "# Hi\n\n*there* & <b>x</b> é".encode())
    assert (r.status_code, r.headers["Content-Type"], r.content) == (
        200,
        "text/html; charset=utf-8",
        "<h1>Hi</h1>\n<p><em>there</em> &amp; <b>x</b> é</p>\n".encode(),
    )
    refused = server.post("/notes/welcome", b"x")
    assert (refused.status_code, refused.text) == (405, "POST is not allowed here\n")


WORDS = [
    (
        "GET /words?text=to+be+or+not+to+be",
        200,
        '{"words":6,"characters":18,"distinct":4,"top":[["be",2],["to",2],["not",1],["or",1]]}',
    ),
    ("GET /words", 200, '{"words":0,"characters":0,"distinct":0,"top":[]}'),
    (
        "GET /words?x=1&text=%C3%A9t%C3%A9+%C3%89T%C3%89",
        200,
        '{"words":2,"characters":7,"distinct":1,"top":[["été",2]]}',
    ),
    ("GET /words?text=%zz", 400, '{"error":"bad percent-encoding in text"}'),
    ("DELETE /words", 405, '{"error":"DELETE is not allowed: use GET or POST"}'),
]


@pytest.mark.parametrize(("request_line", "status", "body"), WORDS)
def test_javascript_words_answers_json(
    server: Server, request_line: str, status: int, body: str
) -> None:
    raw = f"{request_line} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
    head, got = answer(server, raw)
    assert (status_and_type(head), got) == ((status, "application/json"), body.encode() + b"\n")


def test_javascript_words_counts_a_posted_body(server: Server) -> None:
    text = ("The cat and the hat. The END " * 2000).encode()  # 58 KB: several reads
    r = server.post("/words", text, headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.content) == (
        200,
        b'{"words":14000,"characters":58000,"distinct":5,'
        b'"top":[["the",6000],["and",2000],["cat",2000],["end",2000],["hat",2000]]}\n',
    )


def test_c_component_answers_like_the_core_module(server: Server) -> None:
    for query in ("/x/y?a=1&b=%20", ""):
        core = server.get(f"/env{query}", headers={"X-Test": "1"})
        component = server.get(f"/envc{query}", headers={"X-Test": "1"})
        assert component.status_code == core.status_code == 200
        comparable = [
            line.replace("/envc", "/env")
            for line in component.text.splitlines()
            if not line.startswith(("REMOTE_PORT=", "X_REQUEST_ID="))
        ]
        expected = [
            line
            for line in core.text.splitlines()
            if not line.startswith(("REMOTE_PORT=", "X_REQUEST_ID="))
        ]
        assert comparable == expected
        assert "GREETING=hi" in expected


def wagi(*args: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WAGI_")}
    return subprocess.run(
        [sys.executable, "-m", "wagi", *args, "--cache-dir", str(cache)],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        timeout=timeout,
    )


def test_wagi_run_and_check_on_the_component_samples(compiled: Path) -> None:
    tmp_path = compiled
    config = str(SAMPLES / "components.toml")
    check = wagi("check", "--config", config, cache=tmp_path)
    assert check.returncode == 0, check.stderr
    table = [line.split() for line in check.stdout.decode().splitlines() if line.startswith("  /")]
    assert sorted(table) == [
        ["/env/...", "env.component.wasm", "component,", "exports", "wasi:cli/run@0.2.12"],
        ["/notes/...", "notes/notes.wasm", "component,", "exports", "wasi:cli/run@0.2.0"],
        ["/words", "words/words.wasm", "component,", "exports", "wasi:cli/run@0.2.12"],
    ]
    words = wagi("run", "--config", config, "/words?text=a+b+a", cache=tmp_path)
    assert words.returncode == 0, words.stderr
    head, body = split_response(words.stdout)
    # Content-Length or chunked: that depends on how long the run took (docs/cgi.md).
    assert head.split(b"\r\n")[:2] == [b"HTTP/1.1 200 OK", b"Content-Type: application/json"]
    assert body == b'{"words":3,"characters":5,"distinct":2,"top":[["a",2],["b",1]]}\n'
    note = wagi(
        "run", "--config", config, "-X", "POST", "-d", "*hi*", "/notes/preview", cache=tmp_path
    )
    assert note.returncode == 0, note.stderr
    head, body = split_response(note.stdout)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8")
    assert body == b"<p><em>hi</em></p>\n"


# ----------------------------------------------------------------- the probe, both forms

SAME = [
    "/{form}?hdr&readfile=/ro/a.txt&print=",
    "/{form}?hdr&writefile=/ro/b.txt:x&ls=/ro",
    "/{form}?hdr&writefile=/rw/b.txt:x&readfile=/rw/b.txt&print=&ls=/rw&rm=/rw/b.txt",
    "/{form}?hdr&readfile=/ro/../rw-core/x&ls=/&readfile=/etc/passwd",
    "/{form}?hdr&grow=8&grow=30",
    "/{form}?hdr&sleep=10&print=slept",
]


@pytest.mark.parametrize("target", SAME)
def test_probe_component_answers_like_the_core_module(server: Server, target: str) -> None:
    core = server.get(target.format(form="core"))
    component = server.get(target.format(form="comp"))
    assert (component.status_code, component.content) == (core.status_code, core.content)
    assert core.status_code == 200


def test_expected_answers_of_the_probe(server: Server) -> None:
    """What SAME compares, spelled out once (so both forms cannot be wrong alike)."""
    assert server.get("/comp?hdr&readfile=/ro/a.txt").text == "read me"
    assert server.get("/comp?hdr&writefile=/ro/b.txt:x").text.startswith("ERR ")
    assert server.get("/comp?hdr&grow=8&grow=30").text == "grew\nfailed\n"


def test_a_large_answer_streams_and_a_later_trap_cuts_it(server: Server) -> None:
    """Past 256 KiB held back, a component's stdout streams (chunked) as a core module's does;
    a trap after the first bytes cuts the response, never a clean end."""
    size = 300_000
    raw = server.raw(f"GET /comp?hdr&out={size} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    head, body = split_response(raw)
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert body == b"x" * size
    cut = server.raw(f"GET /comp?hdr&out={size}&trap HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    head, _, chunks = cut.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
    assert not chunks.endswith(b"0\r\n\r\n"), "a failed module must never look like a clean end"


def test_run_returning_an_error_is_500(server: Server) -> None:
    r = server.get("/fails")
    assert (r.status_code, r.text) == (500, "500 Internal Server Error: the module failed\n")
    assert "[/fails] exited with code 1" in server.log()


def test_a_replaced_component_is_picked_up(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    module = tmp_path / "swap.wasm"
    shutil.copyfile(PROBE_COMPONENT, module)
    srv = server_factory(f'[[module]]\nroute = "/swap"\nmodule = "{module}"\n', "wasmtime")
    assert srv.get("/swap?hdr&print=component").text == "component\n"
    for source, text in ((PROBE, "core"), (PROBE_COMPONENT, "component again")):
        replacement = tmp_path / "new.wasm"
        shutil.copyfile(source, replacement)
        os.replace(replacement, module)
        assert srv.get(f"/swap?hdr&print={text}").text == f"{text}\n"


# ----------------------------------------------------------------- refusals


def check_refuses(tmp_path: Path, body: str, engine: str = "wasmtime") -> str:
    config = write_config(tmp_path, body)
    result = wagi("check", "--config", str(config), "--engine", engine, cache=tmp_path / "c")
    assert result.returncode == 2, result.stdout
    return result.stderr.decode()


@pytest.mark.parametrize(
    ("imports", "message"),
    [
        (
            '(import "acme:thing/api@1.0.0" (instance))',
            "the component imports 'acme:thing/api@1.0.0', which wagi does not provide\n",
        ),
        (
            '(import "wasi:http/outgoing-handler@0.2.0" (instance))',
            "the component imports 'wasi:http/outgoing-handler@0.2.0': wagi cannot confine "
            "wasi:http (wasmtime's C API sends any request, with no hook where a route's "
            "allowed_hosts could apply); build the component without HTTP (componentize-js: "
            "--disable http fetch-event)\n",
        ),
        (
            '(import "wasi:cli/environment@0.3.0" (instance))',
            "the component imports 'wasi:cli/environment@0.3.0': wagi provides WASI 0.2.x, "
            "not 0.3.0\n",
        ),
    ],
)
def test_start_up_refuses_an_import_it_cannot_give(
    tmp_path: Path, imports: str, message: str
) -> None:
    module = tmp_path / "c.wat"
    module.write_text(command_wat(imports))
    err = check_refuses(tmp_path, f'[[module]]\nroute = "/c"\nmodule = "{module}"\n')
    config = tmp_path / "modules.toml"
    assert err == f"wagi: error: {config}: [[module]] #1 (route '/c'): {module}: {message}"


def test_start_up_refuses_a_component_that_is_no_command(tmp_path: Path) -> None:
    module = tmp_path / "lib.wat"
    module.write_text(command_wat(run=False))
    err = check_refuses(tmp_path, f'[[module]]\nroute = "/c"\nmodule = "{module}"\n')
    assert err.endswith(
        f"{module}: a component that exports no wasi:cli/run@0.2.x (not a command); "
        "wagi runs commands\n"
    )


def test_start_up_refuses_entrypoint_and_tmp_on_a_component(tmp_path: Path) -> None:
    route = f'[[module]]\nroute = "/c"\nmodule = "{PROBE_COMPONENT}"\n'
    config = tmp_path / "modules.toml"
    err = check_refuses(tmp_path, route + 'entrypoint = "hello"\n')
    assert err == (
        f"wagi: error: {config}: [[module]] #1 (route '/c'), key 'entrypoint': "
        f"{PROBE_COMPONENT} is a component, exports wasi:cli/run@0.2.12; a component runs as "
        "a whole, 'entrypoint' (like _routes) belongs to core modules\n"
    )
    err = check_refuses(tmp_path, route + "tmp = true\n")
    assert err == (
        f"wagi: error: {config}: [[module]] #1 (route '/c'), key 'tmp': {PROBE_COMPONENT} is "
        "a component, exports wasi:cli/run@0.2.12; wagi cannot bound what a component writes "
        "to files (no engine offers a hook on WASI 0.2's file streams), so a component gets "
        "no scratch directory\n"
    )


def test_gunicorn_will_not_start_with_a_component_it_cannot_confine(tmp_path: Path) -> None:
    module = tmp_path / "c.wat"
    module.write_text(command_wat('(import "wasi:http/outgoing-handler@0.2.0" (instance))'))
    config = write_config(tmp_path, f'[[module]]\nroute = "/c"\nmodule = "{module}"\n')
    server = start_gunicorn(tmp_path, config, "wasmtime", wait=False)
    assert server.process.wait(timeout=120) != 0
    log = server.log()
    assert "Booting worker" not in log
    assert "imports 'wasi:http/outgoing-handler@0.2.0': wagi cannot confine wasi:http" in log


def test_wasmer_refuses_components_and_auto_picks_wasmtime(tmp_path: Path) -> None:
    config = load_config(SAMPLES / "components.toml")
    problems = refusals("wasmer", config, None)
    assert [p.split(": ", 1)[1] for p in problems] == [
        f"[[module]] #{index} (route '{route}'), key 'module': {SAMPLES / module} is a "
        "WebAssembly component (WASI 0.2); wasmer runs core modules only; use the wasmtime engine"
        for index, route, module in (
            (1, "/notes/...", "notes/notes.wasm"),
            (2, "/words", "words/words.wasm"),
            (3, "/env/...", "env.component.wasm"),
        )
    ]
    assert refusals("wasmtime", config, None) == []
    choice = choose_engine("auto", config, None)
    assert choice.name == "wasmtime"
    if "wasmer" in ENGINES:  # where wasmer imports, auto says why it passed it over
        assert "is a WebAssembly component (WASI 0.2); wasmer runs core modules" in choice.reason
        err = check_refuses(
            tmp_path, f'[[module]]\nroute = "/c"\nmodule = "{PROBE_COMPONENT}"\n', "wasmer"
        )
        assert err == (
            "wagi: error: engine 'wasmer' cannot honour this configuration:\n"
            f"  {tmp_path / 'modules.toml'}: [[module]] #1 (route '/c'), key 'module': "
            f"{PROBE_COMPONENT} is a WebAssembly component (WASI 0.2); wasmer runs core "
            "modules only; use the wasmtime engine\n"
        )


# ----------------------------------------------------------------- the private C API


def test_the_wasmtime_c_api_is_the_one_wagi_was_written_for() -> None:
    """wagi's component runs call wasmtime's C library directly
    (wagi/engines/wasmtime/component.py): setup.cfg pins the wasmtime range; this fails
    loudly if a symbol or a layout changed."""
    wasmtime_component.check()
