"""Route matching: the most specific route wins (docs/configuration.md, 'Routing')."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wagi.routing import Route, RoutingTable, join_subroute


def table(*patterns: str) -> RoutingTable[str]:
    return RoutingTable(Route(p, f"{p}#{i}", (i, 0)) for i, p in enumerate(patterns))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a", "/a#2"),  # exact beats the prefix that also matches /a
        ("/a/b", "/a/b/...#1"),  # longer prefix beats shorter
        ("/a/b/c", "/a/b/...#1"),
        ("/a/c", "/a/...#0"),
        ("/a/", "/a/...#0"),  # /a/ is not /a
        ("/ab", "/...#3"),  # /a/... does not match /aX
        ("/", "/...#3"),
        ("/a%2Fb", "/...#3"),  # raw path: %2F is not a separator, so not under /a/
    ],
)
def test_most_specific_wins(path: str, expected: str) -> None:
    t = table("/a/...", "/a/b/...", "/a", "/...")
    match = t.match(path)
    assert match is not None
    assert match.handler == expected


def test_no_match_is_none() -> None:
    assert table("/a", "/b/...").match("/c") is None
    assert table("/a").match("/a/") is None


def test_equal_routes_first_declared_wins_regardless_of_input_order() -> None:
    routes = [Route("/x/...", "second", (2, 0)), Route("/x/...", "first", (1, 3))]
    match = RoutingTable(routes).match("/x/y")
    assert match is not None and match.handler == "first"
    exact = [Route("/x", "later", (1, 1)), Route("/x", "parent", (1, 0))]
    match = RoutingTable(exact).match("/x")
    assert match is not None and match.handler == "parent"


@pytest.mark.parametrize(
    ("pattern", "path", "script_name", "path_info"),
    [
        ("/test", "/test", "/test", ""),
        ("/test/...", "/test/fizz/buzz", "/test", "/fizz/buzz"),
        ("/test/...", "/test", "/test", ""),
        ("/...", "/any/thing", "", "/any/thing"),
    ],
)
def test_script_name_and_path_info(
    pattern: str, path: str, script_name: str, path_info: str
) -> None:
    match = table(pattern).match(path)
    assert match is not None
    assert (match.script_name, match.raw_path_info) == (script_name, path_info)


@pytest.mark.parametrize(
    ("parent", "pattern", "joined"),
    [
        ("/routes/...", "/hello", "/routes/hello"),
        ("/routes/...", "hello", "/routes/hello"),
        ("/routes", "/bye/...", "/routes/bye/..."),
        ("/...", "/x", "/x"),
        ("/r/", "/x", "/r/x"),
    ],
)
def test_subroute_join(parent: str, pattern: str, joined: str) -> None:
    assert join_subroute(parent, pattern) == joined


def test_routes_listing_is_in_lookup_order() -> None:
    t = table("/...", "/a/...", "/a")
    assert [r.pattern for r in t.routes()] == ["/a", "/a/...", "/..."]


def _linear_match(table: RoutingTable[int], path: str) -> Route[int] | None:
    """The old lookup: every prefix route in specificity order (the reference)."""
    route = table.exact.get(path)
    if route is None:
        route = next((r for r in table.prefixes if r.matches(path)), None)
    return route


_segments = st.lists(st.sampled_from(["a", "b", "ab", "", "x%2F"]), max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_segments, st.booleans()), min_size=1, max_size=8),
    st.lists(_segments, min_size=1, max_size=10),
)
def test_lookup_by_ancestors_finds_what_a_scan_of_every_route_finds(
    patterns: list[tuple[list[str], bool]], paths: list[list[str]]
) -> None:
    routes = []
    for index, (segments, prefix) in enumerate(patterns):
        base = "/" + "/".join(segments)
        pattern = (base.rstrip("/") if base != "/" else "") + "/..." if prefix else base
        routes.append(Route(pattern, index, (index, 0)))
    table = RoutingTable(routes)
    for segments in paths:
        path = "/" + "/".join(segments)
        match = table.match(path)
        assert (match.route if match else None) is _linear_match(table, path)
