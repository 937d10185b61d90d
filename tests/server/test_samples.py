"""The samples people learn from, served by real gunicorn on every engine, byte for byte.

- ``stats.wasm`` (Rust): a JSON API reading argv (the query), the method and stdin.
- ``request.wasm`` (AssemblyScript): an HTML page showing the request it got.
- ``guestbook/guestbook.wasm`` (C): a small web application; entries in a read-write volume,
  its CSS from a read-only one. Engines that cannot honour volumes must refuse it at start-up.
- ``samples/build.sh`` rebuilds every committed ``.wasm`` from its source, byte for byte; the
  Python and JavaScript components (not byte-reproducible) to components that answer alike.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus

import pytest
import requests

from wagi.config import load_config
from wagi.execution.engine_choice import refusals

from ..support.servers import ENGINES, SAMPLES, Server, split_response, start_gunicorn, write_config

FORM = "application/x-www-form-urlencoded"

# ----------------------------------------------------------------- Rust and AssemblyScript

LANGUAGE_SAMPLES = """
[[module]]
route = "/stats"
module = "{samples}/stats.wasm"

[[module]]
route = "/request/..."
module = "{samples}/request.wasm"
"""


@pytest.fixture(scope="module")
def samples(engine: str, server_factory: Callable[..., Server]) -> Server:
    return server_factory(LANGUAGE_SAMPLES, engine, workers=1)


@pytest.mark.parametrize(
    ("query", "status", "body"),
    [
        ("n=1&n=2.5&n=4.5", 200, '{"count":3,"sum":8,"mean":2.6666666666666665,"min":1,"max":4.5}'),
        ("", 200, '{"count":0,"sum":0,"mean":null,"min":null,"max":null}'),
        (
            "n=%2D3&n=1e20&&n=+7+",
            200,
            '{"count":3,"sum":1e20,"mean":3.333333333333333e19,"min":-3,"max":1e20}',
        ),
        (
            "n=0.1&n=0.2",
            200,
            '{"count":2,"sum":0.30000000000000004,"mean":0.15000000000000002,"min":0.1,"max":0.2}',
        ),
        ("n=abc", 400, '{"error":"\'abc\' is not a number"}'),
        ("n=inf", 400, '{"error":"\'inf\' is not a number"}'),
        ("n=1e308&n=1e308", 400, '{"error":"the sum is too large for a 64-bit float"}'),
        ("n=%zz", 400, '{"error":"bad percent-encoding in \'%zz\'"}'),
        ("n=%FF", 400, '{"error":"\'%FF\' does not decode to UTF-8"}'),
        # The decoded name reaches the JSON error: quotes and backslashes escaped.
        (
            "x%22%5C%0A=1",
            400,
            '{"error":"unknown parameter \'x\\"\\\\\\n\': send numbers as n=NUMBER"}',
        ),
    ],
)
def test_rust_stats_answers_json(samples: Server, query: str, status: int, body: str) -> None:
    # Raw bytes: an HTTP client would "fix" the malformed escapes on its way.
    target = "/stats?" + query if query else "/stats"
    assert fetch(samples, f"GET {target}") == (
        status,
        "application/json",
        body.encode() + b"\n",
    )


def fetch(server: Server, request_line: str) -> tuple[int, str, bytes]:
    """Send ``request_line`` as it is; the status, Content-Type and body of the answer."""
    raw = server.raw(f"{request_line} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    head, body = split_response(raw)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers["Content-Type"], body


def test_rust_stats_adds_up_the_body_of_a_post(samples: Server) -> None:
    r = samples.post("/stats?n=10", b"1 2,3\n\t4,,", headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.content) == (
        200,
        b'{"count":5,"sum":20,"mean":4,"min":1,"max":10}\n',
    )
    bad = samples.post("/stats", b"1 two 3")
    assert (bad.status_code, bad.content) == (400, b'{"error":"\'two\' is not a number"}\n')


def test_rust_stats_refuses_other_methods(samples: Server) -> None:
    r = requests.delete(samples.url + "/stats?n=1", timeout=30)
    assert (r.status_code, r.headers["Allow"], r.content) == (
        405,
        "GET, HEAD, POST",
        b'{"error":"method \'DELETE\' is not allowed: use GET or POST"}\n',
    )


PAGE_HEAD = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    "<title>Your request</title>\n"
    "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}"
    "th{text-align:left;padding-right:1em}pre{background:#eee;padding:.5em}</style>\n"
    "</head>\n<body>\n"
)
PAGE_TAIL = (
    '<form method="post"><input name="say" value="hello"> <button>POST it</button></form>\n'
    "</body>\n</html>\n"
)


def test_assemblyscript_page_shows_the_request_escaped(samples: Server) -> None:
    body = "hé <script>alert('x')</script>".encode()
    raw = samples.raw(
        b"POST /request/some/pa%20th?name=Ada&lang=en+GB&mark=%E2%9C%93&bad=%FF&odd=%zz&flag "
        b'HTTP/1.1\r\nHost: example.test\r\nUser-Agent: <b>"agent"</b>\r\n'
        b"X-Greeting: caf\xc3\xa9 & co\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    head, page = split_response(raw)
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert b"\r\nContent-Type: text/html; charset=utf-8\r\n" in head + b"\r\n"
    assert page.decode() == (
        PAGE_HEAD + "<h1>POST /request/some/pa th</h1>\n"
        "<p>An AssemblyScript module made this page for this one request.</p>\n"
        "<h2>Request</h2>\n<table>\n"
        "<tr><th>REQUEST_METHOD</th><td>POST</td></tr>\n"
        "<tr><th>SCRIPT_NAME</th><td>/request</td></tr>\n"
        "<tr><th>PATH_INFO</th><td>/some/pa th</td></tr>\n"
        "<tr><th>QUERY_STRING</th><td>name=Ada&amp;lang=en+GB&amp;mark=%E2%9C%93&amp;bad=%FF"
        "&amp;odd=%zz&amp;flag</td></tr>\n"
        "<tr><th>SERVER_PROTOCOL</th><td>HTTP/1.1</td></tr>\n"
        "<tr><th>REMOTE_ADDR</th><td>127.0.0.1</td></tr>\n"
        "</table>\n<h2>Query parameters (argv)</h2>\n<table>\n"
        "<tr><th>name</th><td>Ada</td></tr>\n"
        "<tr><th>lang</th><td>en GB</td></tr>\n"
        "<tr><th>mark</th><td>✓</td></tr>\n"
        "<tr><th>bad</th><td>(not UTF-8)</td></tr>\n"
        "<tr><th>odd</th><td>%zz</td></tr>\n"
        "<tr><th>flag</th><td></td></tr>\n"
        "</table>\n<h2>Headers (HTTP_ variables)</h2>\n<table>\n"
        f"<tr><th>Content-Length</th><td>{len(body)}</td></tr>\n"
        "<tr><th>Content-Type</th><td>text/plain; charset=utf-8</td></tr>\n"
        "<tr><th>Host</th><td>example.test</td></tr>\n"
        "<tr><th>User-Agent</th><td>&lt;b&gt;&quot;agent&quot;&lt;/b&gt;</td></tr>\n"
        "<tr><th>X-Greeting</th><td>café &amp; co</td></tr>\n"
        "</table>\n<h2>Body (stdin)</h2>\n"
        f"<p>{len(body)} bytes of text/plain; charset=utf-8</p>\n"
        "<pre>hé &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</pre>\n" + PAGE_TAIL
    )


def test_assemblyscript_page_without_query_or_body(samples: Server) -> None:
    raw = samples.raw(b"GET /request HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert split_response(raw)[1].decode() == (
        PAGE_HEAD + "<h1>GET /request</h1>\n"
        "<p>An AssemblyScript module made this page for this one request.</p>\n"
        "<h2>Request</h2>\n<table>\n"
        "<tr><th>REQUEST_METHOD</th><td>GET</td></tr>\n"
        "<tr><th>SCRIPT_NAME</th><td>/request</td></tr>\n"
        "<tr><th>PATH_INFO</th><td></td></tr>\n"
        "<tr><th>QUERY_STRING</th><td></td></tr>\n"
        "<tr><th>SERVER_PROTOCOL</th><td>HTTP/1.1</td></tr>\n"
        "<tr><th>REMOTE_ADDR</th><td>127.0.0.1</td></tr>\n"
        "</table>\n<h2>Query parameters (argv)</h2>\n"
        '<p>None. Try <a href="?name=Ada&amp;lang=en">?name=Ada&amp;lang=en</a>.</p>\n'
        "<h2>Headers (HTTP_ variables)</h2>\n<table>\n"
        "<tr><th>Host</th><td>h</td></tr>\n"
        "</table>\n<h2>Body (stdin)</h2>\n<p>No body.</p>\n" + PAGE_TAIL
    )


def test_assemblyscript_page_shows_a_long_body_cut_at_a_character(samples: Server) -> None:
    body = "é".encode() * 3000  # 6000 bytes; the page shows at most 4096, whole characters
    r = samples.post("/request", body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    page = r.content.decode()
    shown = page.split("<pre>")[1].split("</pre>")[0]
    assert shown == "é" * 2048
    assert "<p>6000 bytes of text/plain</p>\n" in page
    assert "<p>(the first 4096 bytes)</p>\n" in page


# ----------------------------------------------------------------- the guestbook

SAMPLES_CONFIG = load_config(SAMPLES / "modules.toml")
GUESTBOOK_ENGINES = [e for e in ENGINES if not refusals(e, SAMPLES_CONFIG, None)]
REFUSING_ENGINES = [e for e in ENGINES if refusals(e, SAMPLES_CONFIG, None)]
CSS = (SAMPLES / "guestbook" / "static" / "guestbook.css").read_bytes()


def guestbook_config(directory: Path, data: Path) -> Path:
    """The guestbook's two routes as in samples/modules.toml, with entries kept in ``data``."""
    static = SAMPLES / "guestbook" / "static"
    return write_config(
        directory,
        f"""
        [[module]]
        route = "/guestbook"
        module = "{{samples}}/guestbook/guestbook.wasm"
        volumes = {{{{ "/data" = "{data}" }}}}

        [[module]]
        route = "/guestbook/static/..."
        module = "{{samples}}/guestbook/guestbook.wasm"
        entrypoint = "static"
        volumes = {{{{ "/static" = {{{{ path = "{static}", read_only = true }}}} }}}}
        """,
    )


@dataclass
class Guestbook:
    server: Server
    entries: Path
    """The data file, in the volume mapped at /data."""

    def reset(self, lines: str | None = None) -> None:
        """Start from no data file, or from one holding ``lines``."""
        self.entries.unlink(missing_ok=True)
        if lines is not None:
            self.entries.write_bytes(lines.encode())

    def sign(self, body: bytes, content_type: str = FORM) -> requests.Response:
        return self.server.post("/guestbook", body, headers={"Content-Type": content_type})


@pytest.fixture(scope="module", params=GUESTBOOK_ENGINES)
def guestbook(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guestbook]:
    tmp = tmp_path_factory.mktemp("guestbook")
    data = tmp / "data"
    data.mkdir()
    config = guestbook_config(tmp / "conf", data)
    server = start_gunicorn(tmp, config, str(request.param), workers=2)
    yield Guestbook(server, data / "entries.log")
    server.stop()


def guestbook_page(entries: str, *, error: str = "", name: str = "", message: str = "") -> str:
    """The page the guestbook must send, byte for byte, around its list of entries."""
    alert = f'<p class="error" role="alert">{error}</p>\n' if error else ""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>Guestbook</title>\n"
        '<link rel="stylesheet" href="/guestbook/static/guestbook.css">\n'
        "</head>\n<body>\n<main>\n<h1>Guestbook</h1>\n"
        '<form method="post" action="/guestbook" accept-charset="utf-8">\n'
        f"{alert}"
        '<label for="name">Your name</label>\n'
        f'<input id="name" name="name" maxlength="60" required value="{name}">\n'
        '<label for="message">Message</label>\n'
        '<textarea id="message" name="message" maxlength="1000" rows="4" required>'
        f"{message}</textarea>\n"
        '<button type="submit">Sign the guestbook</button>\n</form>\n'
        f"{entries}</main>\n</body>\n</html>\n"
    )


NO_ENTRIES = '<p class="empty">No entries yet: be the first to sign.</p>\n'


def entry_html(number: int, name: str, when: int, message: str) -> str:
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    human = time.strftime("%d %b %Y, %H:%M UTC", time.gmtime(when))
    return (
        f'<li id="entry-{number}">\n<p class="meta"><span class="name">{name}</span> '
        f'<time datetime="{iso}">{human}</time></p>\n<p class="message">{message}</p>\n</li>\n'
    )


def test_guestbook_starts_empty(guestbook: Guestbook) -> None:
    guestbook.reset()
    r = guestbook.server.get("/guestbook")
    assert (r.status_code, r.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert r.content.decode() == guestbook_page(NO_ENTRIES)


def test_guestbook_shows_stored_entries_newest_first_escaped(guestbook: Guestbook) -> None:
    guestbook.reset(
        "v1\t1000000000\tAda\tFirst!\n"
        "not an entry\n"
        'v1\t1700000000\t<b>Bob</b> & "Eve"\tline one%0Aline two%09tab 100%25 <i>\n'
        "v2\t1\tfrom the future\tskipped\n"
        "v1\tsoon\tbad time\tskipped\n"
        "v1\t1800000000\tZoë 'Z'\t🎉 &amp;\n"
        "v1\t1900000000\thalf\twritten"  # no newline: a write still in progress
    )
    r = guestbook.server.get("/guestbook")
    assert r.status_code == 200
    assert r.content.decode() == guestbook_page(
        '<h2>3 entries</h2>\n<ol class="entries">\n'
        + entry_html(3, "Zoë &#39;Z&#39;", 1800000000, "🎉 &amp;amp;")
        + entry_html(
            2,
            "&lt;b&gt;Bob&lt;/b&gt; &amp; &quot;Eve&quot;",
            1700000000,
            "line one\nline two\ttab 100% &lt;i&gt;",
        )
        + entry_html(1, "Ada", 1000000000, "First!")
        + "</ol>\n"
    )


HOSTILE_NAME = '<script>alert("x")</script> O\'Brien & Ω'
HOSTILE_MESSAGE = "Grüße 🎉\r\nline two: <img src=x onerror=alert(1)> %41 &amp;\t"


def test_guestbook_post_redirects_and_stores_the_entry_escaped(guestbook: Guestbook) -> None:
    guestbook.reset()
    before = int(time.time())
    body = f"name={quote_plus(HOSTILE_NAME)}&message={quote_plus(HOSTILE_MESSAGE)}&extra=ignored"
    r = guestbook.sign(body.encode(), FORM + "; charset=UTF-8")
    after = int(time.time())
    assert (r.status_code, r.headers["Location"]) == (303, "/guestbook")
    assert r.content == b""

    line = guestbook.entries.read_text()
    stored = re.fullmatch(r"v1\t(\d+)\t(.*)\t(.*)\n", line)
    assert stored, line
    when = int(stored[1])
    assert before <= when <= after
    # Trimmed; CRLF became LF; "%", tab and LF are escaped so the line format holds.
    assert stored[2] == HOSTILE_NAME
    assert stored[3] == "Grüße 🎉%0Aline two: <img src=x onerror=alert(1)> %2541 &amp;"

    page = guestbook.server.get("/guestbook").content.decode()
    assert page == guestbook_page(
        '<h2>1 entry</h2>\n<ol class="entries">\n'
        + entry_html(
            1,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; O&#39;Brien &amp; Ω",
            when,
            "Grüße 🎉\nline two: &lt;img src=x onerror=alert(1)&gt; %41 &amp;amp;",
        )
        + "</ol>\n"
    )


@pytest.mark.parametrize(
    ("body", "error", "name", "message"),
    [
        ("name=&message=hi", "Please tell us your name.", "", "hi"),
        ("name=+%20+&message=hi", "Please tell us your name.", "", "hi"),
        ("name=Ada&message=%0D%0A", "Please write a message.", "Ada", ""),
        ("message=hi", "Please tell us your name.", "", "hi"),
        (
            "name=A%07da&message=%3Cb%3E",
            "Please leave out control characters.",
            "A\x07da",
            "&lt;b&gt;",
        ),
        (
            "name=" + "%C3%A9" * 61 + "&message=hi",
            "Your name is too long (at most 60 characters).",
            "é" * 61,
            "hi",
        ),
        (
            "name=Ada&message=" + "x" * 1001,
            "Your message is too long (at most 1000 characters).",
            "Ada",
            "x" * 1001,
        ),
        # Not UTF-8, or not decodable: nothing typed is shown again.
        ("name=%FF&message=hi", "The form was not sent as UTF-8 text.", "", ""),
        ("name=%ED%A0%80&message=hi", "The form was not sent as UTF-8 text.", "", ""),
        ("name=%C0%AF&message=hi", "The form was not sent as UTF-8 text.", "", ""),
        ("name=Ada&message=100%", "The form data is malformed.", "", ""),
    ],
)
def test_guestbook_refuses_a_bad_form_and_shows_it_again(
    guestbook: Guestbook, body: str, error: str, name: str, message: str
) -> None:
    guestbook.reset()
    r = guestbook.sign(body.encode())
    assert (r.status_code, r.headers["Content-Type"]) == (400, "text/html; charset=utf-8")
    assert r.content.decode() == guestbook_page(NO_ENTRIES, error=error, name=name, message=message)
    assert not guestbook.entries.exists()


def test_guestbook_accepts_the_longest_entry(guestbook: Guestbook) -> None:
    guestbook.reset()
    body = "name=" + "%C3%A9" * 60 + "&message=" + "%F0%9F%8E%89" * 1000
    assert guestbook.sign(body.encode()).status_code == 303
    assert guestbook.entries.read_text().split("\t")[2:] == ["é" * 60, "🎉" * 1000 + "\n"]


@pytest.mark.parametrize(
    ("method", "content_type", "body", "status", "text"),
    [
        (
            "POST",
            "text/plain",
            b"name=a&message=b",
            415,
            b"Send the form as application/x-www-form-urlencoded.\n",
        ),
        (
            "POST",
            "multipart/form-data; boundary=x",
            b"",
            415,
            b"Send the form as application/x-www-form-urlencoded.\n",
        ),
        (
            "POST",
            FORM,
            b"name=a&message=" + b"x" * (16 * 1024),
            413,
            b"That is more than a guestbook entry.\n",
        ),
        ("PUT", FORM, b"name=a&message=b", 405, b"Use GET or POST.\n"),
    ],
)
def test_guestbook_refuses_other_requests(
    guestbook: Guestbook, method: str, content_type: str, body: bytes, status: int, text: bytes
) -> None:
    guestbook.reset()
    r = requests.request(
        method,
        guestbook.server.url + "/guestbook",
        data=body,
        headers={"Content-Type": content_type},
        timeout=30,
        allow_redirects=False,
    )
    assert (r.status_code, r.headers["Content-Type"], r.content) == (
        status,
        "text/plain; charset=utf-8",
        text,
    )
    assert not guestbook.entries.exists()


def test_guestbook_keeps_every_entry_whole_under_concurrent_posts(guestbook: Guestbook) -> None:
    """Two workers append at once; O_APPEND single writes keep every line whole."""
    guestbook.reset()
    count = 48
    # Big entries (about 2 KiB each) would interleave if a write were split or not appended.
    messages = {f"writer {i:02d} " + chr(0x3B1 + i % 24) * 980 for i in range(count)}

    def post(message: str) -> int:
        body = f"name=load&message={quote_plus(message)}".encode()
        with requests.Session() as s:
            r = s.post(
                guestbook.server.url + "/guestbook",
                data=body,
                headers={"Content-Type": FORM},
                timeout=60,
                allow_redirects=False,
            )
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(post, sorted(messages)))
    assert statuses == [303] * count
    lines = guestbook.entries.read_text().splitlines(keepends=True)
    whole = [re.fullmatch(r"v1\t\d+\tload\t(writer \d\d .*)\n", line) for line in lines]
    assert all(whole), [line[:40] for line, ok in zip(lines, whole, strict=True) if not ok]
    assert sorted(match[1] for match in whole if match) == sorted(messages)
    page = guestbook.server.get("/guestbook").content.decode()
    assert f"<h2>{count} entries</h2>" in page
    assert page.count('<p class="message">writer ') == count


def test_guestbook_serves_its_css_from_the_read_only_volume(guestbook: Guestbook) -> None:
    r = guestbook.server.get("/guestbook/static/guestbook.css")
    assert (r.status_code, r.headers["Content-Type"], r.content) == (
        200,
        "text/css; charset=utf-8",
        CSS,
    )
    assert r.headers["Cache-Control"] == "public, max-age=300"


@pytest.mark.parametrize(
    "path",
    [
        "/guestbook/static/missing.css",
        "/guestbook/static/",
        "/guestbook/static/..%2Fguestbook.c",
        "/guestbook/static/.hidden",
        "/guestbook/static/sub/guestbook.css",
    ],
)
def test_guestbook_static_serves_plain_names_only(guestbook: Guestbook, path: str) -> None:
    r = guestbook.server.get(path)
    assert (r.status_code, r.content) == (404, b"No such file.\n")


def test_the_samples_configuration_serves_the_guestbook(tmp_path: Path) -> None:
    """samples/modules.toml itself, as `./serve` runs it: the guestbook's volumes resolve."""
    server = start_gunicorn(tmp_path, SAMPLES / "modules.toml", "auto", workers=1)
    try:
        # Only requests that write nothing: the volume is the checkout's samples/guestbook/data.
        css = server.get("/guestbook/static/guestbook.css")
        assert (css.status_code, css.content) == (200, CSS)
        page = server.get("/guestbook")
        assert (page.status_code, page.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
        assert page.text.startswith(guestbook_page("").split("</main>")[0])
        assert server.get("/stats?n=2&n=4").content == (
            b'{"count":2,"sum":6,"mean":3,"min":2,"max":4}\n'
        )
        assert "engine wasmtime" in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("engine", REFUSING_ENGINES)
def test_engines_without_volumes_refuse_the_guestbook_at_start_up(
    tmp_path: Path, engine: str
) -> None:
    server = start_gunicorn(tmp_path, SAMPLES / "modules.toml", engine, wait=False)
    assert server.process.wait(timeout=60) != 0
    log = server.log()
    assert "Booting worker" not in log
    where = f"{SAMPLES / 'modules.toml'}: [[module]] #{{}} (route {{!r}}), key 'volumes': "
    # Both guestbook routes have a read-only volume (its CSS): wasmer opens every file
    # read-write, so even behind the kernel wall it could not read one.
    for index, route in ((8, "/guestbook/static/..."),):
        assert (
            where.format(index, route) + f"{engine} opens every file read-write, so behind the "
            "kernel wall a read-only volume could not even be read; use the wasmtime engine or "
            "make the volume read-write"
        ) in log


# ----------------------------------------------------------------- the build


def test_build_sh_rebuilds_every_committed_module_byte_for_byte(tmp_path: Path) -> None:
    """The committed .wasm files are what samples/build.sh makes of the committed sources."""
    result = subprocess.run(
        [str(SAMPLES / "build.sh")],
        env={**os.environ, "OUT_DIR": str(tmp_path)},
        capture_output=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr.decode()
    built = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.wasm"))
    assert built == [
        "echo.wasm",
        "env.component.wasm",
        "env.wasm",
        "guestbook/guestbook.wasm",
        "request.wasm",
        "routes.wasm",
        "stats.wasm",
    ]
    stale = [n for n in built if (tmp_path / n).read_bytes() != (SAMPLES / n).read_bytes()]
    assert not stale, f"rebuild with samples/build.sh and commit: {stale}"


# Requests to a rebuilt Python or JavaScript component, and their answers byte for byte
# (tests/test_components.py holds the committed components to the same and more).
NOTES_STYLE = (
    "body{font-family:sans-serif;max-width:42em;margin:2em auto;line-height:1.5}"
    "pre{background:#eee;padding:.5em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.2em .5em}"
)
HTML = "Status: 200 OK\nContent-Type: text/html; charset=utf-8\n\n"
JSON = "Content-Type: application/json\n\n"
COMPONENT_PROBES = {
    "notes/notes.wasm": [
        (
            ["/notes"],
            {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/notes"},
            b"",
            HTML + '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>Notes</title>\n<style>{NOTES_STYLE}</style>\n</head>\n<body>\n"
            '<h1>Notes</h1>\n<ul>\n<li><a href="/notes/about">about</a></li>\n'
            '<li><a href="/notes/welcome">welcome</a></li>\n</ul>\n</body>\n</html>\n',
        ),
        (
            ["/notes"],
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/nope"},
            b"",
            "Status: 404 Not Found\nContent-Type: text/plain; charset=utf-8\n\nno page 'nope'\n",
        ),
        (
            ["/notes"],
            {"REQUEST_METHOD": "POST", "PATH_INFO": "/preview", "CONTENT_LENGTH": "13"},
            b"# T\n\n`x` *y*",
            HTML + "<h1>T</h1>\n<p><code>x</code> <em>y</em></p>\n",
        ),
    ],
    "words/words.wasm": [
        (
            ["/words", "text=to+be+or+not+to+be"],
            {"REQUEST_METHOD": "GET"},
            b"",
            "Status: 200 OK\n" + JSON + '{"words":6,"characters":18,"distinct":4,'
            '"top":[["be",2],["to",2],["not",1],["or",1]]}\n',
        ),
        (
            ["/words"],
            {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "11"},
            "b a b\né 'x".encode(),
            "Status: 200 OK\n" + JSON + '{"words":5,"characters":10,"distinct":4,'
            '"top":[["b",2],["\'x",1],["a",1],["é",1]]}\n',
        ),
        (
            ["/words"],
            {"REQUEST_METHOD": "PUT"},
            b"",
            "Status: 405 Method Not Allowed\n"
            + JSON
            + '{"error":"PUT is not allowed: use GET or POST"}\n',
        ),
    ],
}


def test_build_sh_rebuilds_the_python_and_javascript_components(tmp_path: Path) -> None:
    """componentize-py and componentize-js do not build byte for byte (each build snapshots
    a freshly started interpreter), so a rebuild from the committed sources must *answer*
    exactly as the committed component does (COMPONENT_PROBES)."""
    from wagi.engines.base import Invocation, Preopen
    from wagi.engines.wasmtime.engine import WasmtimeEngine

    bin_dir = str(Path(sys.executable).parent)  # componentize-py, from the test extras
    result = subprocess.run(
        [str(SAMPLES / "build.sh"), "python", "javascript"],
        env={
            **os.environ,
            "OUT_DIR": str(tmp_path),
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHON": sys.executable,
        },
        capture_output=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr.decode()
    engine = WasmtimeEngine()
    pages = (Preopen("/pages", SAMPLES / "notes" / "pages", read_only=True),)
    for name, requests_ in COMPONENT_PROBES.items():
        rebuilt = engine.load(tmp_path / name)
        for argv, env, stdin, answer in requests_:
            invocation = Invocation(argv=argv, env=env, stdin=stdin, preopens=pages)
            assert engine.run(rebuilt, invocation).stdout.decode() == answer, (name, env)
