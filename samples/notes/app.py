"""A small notes site in Python: Markdown pages rendered to HTML, one request per run.

wagi runs this as a WASI 0.2 command component built by componentize-py (see build.sh):
a plain CGI script. The request is in the environment (REQUEST_METHOD, PATH_INFO, ...) and
on stdin; the answer goes to stdout, a header block, an empty line and the body.

    GET  /notes               the list of pages (the .md files of the /pages volume)
    GET  /notes/NAME          the page NAME.md, as HTML
    POST /notes/preview       the request body (Markdown) as an HTML fragment

Python-Markdown, a pure-Python package, is bundled into the component. Everything at the
top level (the imports, the Markdown converter) runs once, when the component is built:
each request starts from that snapshot.
"""

from __future__ import annotations

import html
import os
import re
import sys

import markdown
from wit_world import exports

PAGES = "/pages"
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
STYLE = (
    "body{font-family:sans-serif;max-width:42em;margin:2em auto;line-height:1.5}"
    "pre{background:#eee;padding:.5em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.2em .5em}"
)
CONVERTER = markdown.Markdown(extensions=["tables", "fenced_code"], output_format="html")


def render(text: str) -> str:
    CONVERTER.reset()
    return CONVERTER.convert(text)


def page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def answer(status: str, content_type: str, body: str) -> None:
    out = sys.stdout.buffer
    out.write(f"Status: {status}\nContent-Type: {content_type}\n\n".encode())
    out.write(body.encode())
    out.flush()


def not_found(what: str) -> None:
    answer("404 Not Found", "text/plain; charset=utf-8", f"no page {what}\n")


def index(script: str) -> None:
    try:
        names = sorted(f[:-3] for f in os.listdir(PAGES) if f.endswith(".md") and NAME.fullmatch(f[:-3]))
    except OSError as exc:
        answer("500 Internal Server Error", "text/plain", f"cannot list the pages: {exc.strerror}\n")
        return
    items = "\n".join(f'<li><a href="{script}/{n}">{html.escape(n)}</a></li>' for n in names)
    answer("200 OK", "text/html; charset=utf-8", page("Notes", f"<h1>Notes</h1>\n<ul>\n{items}\n</ul>"))


def show(name: str) -> None:
    if not NAME.fullmatch(name):
        not_found(repr(name))
        return
    try:
        with open(f"{PAGES}/{name}.md", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        not_found(repr(name))
        return
    answer("200 OK", "text/html; charset=utf-8", page(name, render(text)))


def preview() -> None:
    length = int(os.environ.get("CONTENT_LENGTH") or 0)
    text = sys.stdin.buffer.read(length).decode("utf-8", "replace")
    answer("200 OK", "text/html; charset=utf-8", render(text) + "\n")


class Run(exports.Run):
    def run(self) -> None:
        method = os.environ.get("REQUEST_METHOD", "GET")
        script = os.environ.get("SCRIPT_NAME", "")
        path = os.environ.get("PATH_INFO", "").strip("/")
        if method == "POST" and path == "preview":
            preview()
        elif method not in ("GET", "HEAD"):
            answer("405 Method Not Allowed", "text/plain", f"{method} is not allowed here\n")
        elif path == "":
            index(script)
        else:
            show(path)
