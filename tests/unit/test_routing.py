"""Route matching: the most specific route wins, a host's routes first (docs/configuration.md,
'Routing')."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wagi.routing import (
    Route,
    RoutingTable,
    canonical_host,
    join_subroute,
    request_host,
    validate_host,
)


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


# -- virtual hosts (docs/configuration.md, "Routing") -------------------------------------


def hosted(*routes: tuple[str, str | None]) -> RoutingTable[str]:
    return RoutingTable(
        Route(p, f"{h or '*'}{p}#{i}", (i, 0), host=h) for i, (p, h) in enumerate(routes)
    )


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        # The host's routes first: its most specific match wins, even over a more
        # specific route of every host (an nginx server block).
        ("admin.example.com", "/api", "admin.example.com/...#2"),
        ("admin.example.com", "/admin", "admin.example.com/admin#3"),
        ("admin.example.com", "/", "admin.example.com/...#2"),
        # Same path, with and without host: the host's wins.
        ("shop.example.com", "/api", "shop.example.com/api#4"),
        # The host has routes but none matches: the routes of every host answer.
        ("shop.example.com", "/other", "*/...#1"),
        # A host with no routes of its own, or none at all.
        ("www.example.com", "/api", "*/api#0"),
        ("www.example.com", "/admin", "*/...#1"),
        (None, "/admin", "*/...#1"),
        ("", "/api", "*/api#0"),
    ],
)
def test_a_hosts_routes_come_first(host: str | None, path: str, expected: str) -> None:
    t = hosted(
        ("/api", None),
        ("/...", None),
        ("/...", "admin.example.com"),
        ("/admin", "admin.example.com"),
        ("/api", "shop.example.com"),
    )
    match = t.match(path, host)
    assert match is not None and match.handler == expected


def test_without_a_host_only_host_less_routes_answer() -> None:
    t = hosted(("/a", "admin.example.com"))
    assert t.match("/a") is None
    assert t.match("/a", "other.example.com") is None
    assert t.match("/a", "admin.example.com") is not None


def test_routes_listing_puts_each_hosts_routes_first() -> None:
    t = hosted(("/...", None), ("/a", "b.example"), ("/a/...", "a.example"), ("/a", "a.example"))
    assert [r.label for r in t.routes()] == [
        "b.example/a",
        "a.example/a",
        "a.example/a/...",
        "/...",
    ]


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("admin.example.com", "admin.example.com"),
        ("Admin.EXAMPLE.com", "admin.example.com"),
        ("admin.example.com:8080", "admin.example.com"),
        ("ADMIN.example.com.:443", "admin.example.com"),
        ("admin.example.com:", "admin.example.com"),
        ("127.0.0.1:3000", "127.0.0.1"),
        ("[::1]:3000", "[::1]"),
        ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ("[FE80::A]:80", "[fe80::a]"),
        ("[not-an-address]:80", "[not-an-address]"),
        ("a:b", "a:b"),
    ],
)
def test_request_host_drops_the_port_and_case(header: str, key: str) -> None:
    assert canonical_host(header) == key
    assert request_host({"HTTP_HOST": header}) == key


def test_request_host_without_a_host_header_is_the_default_host() -> None:
    assert request_host({}, "Example.org:3000") == "example.org"
    assert request_host({"HTTP_HOST": ""}, "localhost:3000") == "localhost"
    assert request_host({}) == ""


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("admin.example.com", "admin.example.com"),
        ("Admin.Example.COM.", "admin.example.com"),
        ("localhost", "localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("[::1]", "[::1]"),
        ("[0::1]", "[::1]"),
    ],
)
def test_valid_hosts(value: str, key: str) -> None:
    assert validate_host(value) == key


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("admin.example.com:8080", "without a port"),
        ("https://admin.example.com", "without scheme or path"),
        ("admin.example.com/x", "without scheme or path"),
        ("", "expected a DNS name"),
        ("-a.example", "expected a DNS name"),
        ("a..example", "expected a DNS name"),
        ("*.example.com", "expected a DNS name"),
        ("a b", "expected a DNS name"),
        ("x" * 64 + ".example", "expected a DNS name"),
        ("bücher.example", "expected a DNS name"),
        ("[::1", "not an IPv6 address"),
        ("[::g]", "not an IPv6 address"),
        (3, "expected a host name"),
    ],
)
def test_invalid_hosts(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_host(value)


def _scan(routes: list[Route[int]], path: str, host: str) -> Route[int] | None:
    """The rule by brute force: the host's routes, then every host's, each most specific first."""
    for candidates in ([r for r in routes if r.host == host], [r for r in routes if not r.host]):
        exact = [r for r in candidates if r.pattern == path]
        if exact:
            return min(exact, key=lambda r: r.order)
        prefixes = [r for r in candidates if r.is_prefix and r.matches(path)]
        if prefixes:
            return min(prefixes, key=lambda r: (-len(r.base), r.order))
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_segments, st.booleans(), st.sampled_from([None, "a.example", "b.example"])),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.tuples(_segments, st.sampled_from(["a.example", "b.example", "c.example"]))),
)
def test_host_lookup_finds_what_a_scan_finds(
    patterns: list[tuple[list[str], bool, str | None]], requests: list[tuple[list[str], str]]
) -> None:
    routes = []
    for index, (segments, prefix, host) in enumerate(patterns):
        base = "/" + "/".join(segments)
        pattern = (base.rstrip("/") if base != "/" else "") + "/..." if prefix else base
        routes.append(Route(pattern, index, (index, 0), host))
    table = RoutingTable(routes)
    for segments, host in requests:
        path = "/" + "/".join(segments)
        match = table.match(path, host)
        assert (match.route if match else None) is _scan(routes, path, host)
