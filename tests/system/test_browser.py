"""The guestbook sample in a real headless browser, through a real nginx in front of wagi.

Debian's chromium (``/usr/bin/chromium``), driven by Playwright for Python, loads the page
from nginx, which proxies to gunicorn over a unix socket, as in production. The browser
submits the form with hostile input, follows the 303, and must show the entry as text, keep it
after a reload, and apply the stylesheet served by the module's second route. A screenshot of
the page is kept under pytest's temporary directory and its path printed.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from ..server.test_samples import GUESTBOOK_ENGINES, guestbook_config
from ..support.nginx import nginx_in_front
from ..support.servers import Server, start_gunicorn

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No sandbox (root in CI), and nothing that reaches for the network on its own: this machine
# has none, and every such attempt would be refused or time out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

NAME = "<script>window.pwned = 'name'</script> O'Brien & \"Ω\""
MESSAGE = "Grüße 🎉\n<img src=x onerror=\"window.pwned = 'message'\">\nline three & more"
ACCENT = "rgb(179, 84, 30)"  # --accent in guestbook.css
PAPER = "rgb(253, 246, 227)"  # --paper


@pytest.fixture(params=GUESTBOOK_ENGINES)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Server, Path]]:
    """nginx's URL, the gunicorn behind it, and the guestbook's data directory."""
    data = tmp_path / "data"
    data.mkdir()
    sock = tmp_path / "wagi.sock"
    config = guestbook_config(tmp_path / "conf", data)
    server = start_gunicorn(tmp_path, config, str(request.param), bind=f"unix:{sock}", wait=False)
    with nginx_in_front(tmp_path, sock, server) as url:
        yield url, server, data
    server.stop()


def test_sign_the_guestbook_in_a_real_browser(
    site: tuple[str, Server, Path], tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium); ./run-tests installs it")
    url, _, data = site
    home = url + "/guestbook"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh, empty --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 800, "height": 700},
        )
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            exchanges: list[tuple[str, str, int]] = []
            page.on("response", lambda r: exchanges.append((r.request.method, r.url, r.status)))

            page.goto(home)
            assert page.title() == "Guestbook"
            assert page.locator(".empty").text_content() == "No entries yet: be the first to sign."

            # A name of spaces passes the browser's `required` check but not the module's:
            # the error page shows what was typed again, as text.
            page.fill("#name", "   ")
            page.fill("#message", "<b>kept</b>")
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.locator(".error").text_content() == "Please tell us your name."
            assert page.input_value("#message") == "<b>kept</b>"

            page.fill("#name", NAME)
            page.fill("#message", MESSAGE)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url == home  # Post/Redirect/Get: the browser followed the 303

            def assert_one_entry_as_text() -> None:
                assert page.locator(".entries li").count() == 1
                assert page.locator(".entries .name").text_content() == NAME
                assert page.locator(".entries .message").text_content() == MESSAGE
                assert page.locator(".entries script, .entries img").count() == 0
                assert page.evaluate("window.pwned") is None
                assert page.locator("h2").text_content() == "1 entry"

            assert_one_entry_as_text()
            page.reload()
            assert_one_entry_as_text()
            assert page.url == home

            def style(selector: str, prop: str) -> str:
                value = page.eval_on_selector(
                    selector, f"e => getComputedStyle(e).getPropertyValue('{prop}')"
                )
                return str(value)

            assert style("h1", "color") == ACCENT
            assert style("body", "background-color") == PAPER
            assert style(".entries li", "border-left-color") == ACCENT
            assert style(".entries .message", "white-space") == "pre-wrap"

            screenshot = tmp_path / "guestbook.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"\nguestbook screenshot: {screenshot}")
        finally:
            browser.close()

    assert dialogs == []
    css = url + "/guestbook/static/guestbook.css"
    assert ("POST", home, 400) in exchanges
    # The 303 and the GET it led to, then the reload; the stylesheet each time it was needed.
    posts = [e for e in exchanges if e[0] == "POST"]
    assert posts == [("POST", home, 400), ("POST", home, 303)]
    assert exchanges.count(("GET", home, 200)) == 3
    assert ("GET", css, 200) in exchanges
    assert all(status < 400 for method, _, status in exchanges if method == "GET")

    # What the browser sent arrived: the textarea's line breaks (CRLF) are stored as one LF.
    stored = (data / "entries.log").read_text().split("\t")
    assert stored[2:] == [NAME, MESSAGE.replace("\n", "%0A") + "\n"]

    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == 800 and height >= 700
