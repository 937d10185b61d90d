"""``argv`` as a TOML list, end to end on every engine (the expansion rules: test_settings)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ..support.servers import Server

CONFIG = """
[[module]]
route = "/list/..."
module = "{probe}"
argv = ["${{SCRIPT_NAME}}", "hdr", "args", "print=two words", "${{ARGS}}", "print=q ${{ARGS}}"]

[[module]]
route = "/string"
module = "{probe}"
argv = "${{SCRIPT_NAME}} hdr args ${{ARGS}}"
"""


@pytest.fixture(scope="module")
def server(engine: str, server_factory: Callable[..., Server]) -> Server:
    return server_factory(CONFIG, engine, workers=1)


def test_list_items_keep_their_spaces_and_args_expand(server: Server) -> None:
    r = server.get("/list/sub?print=a&print=b")
    assert r.text == (
        "argv[0]=/list\n"
        "argv[1]=hdr\n"
        "argv[2]=args\n"
        "argv[3]=print=two words\n"
        "argv[4]=print=a\n"
        "argv[5]=print=b\n"
        "argv[6]=print=q print=a print=b\n"
        "two words\na\nb\nq print=a print=b\n"
    )
    r = server.get("/list")
    assert r.text == (
        "argv[0]=/list\nargv[1]=hdr\nargv[2]=args\nargv[3]=print=two words\n"
        "argv[4]=print=q \ntwo words\nq \n"
    )


def test_the_string_form_is_unchanged(server: Server) -> None:
    r = server.get("/string?print=a")
    assert r.text == "argv[0]=/string\nargv[1]=hdr\nargv[2]=args\nargv[3]=print=a\na\n"
