"""Routes and the routing table: how a request path finds what to run.

A route is ``/exact`` or ``/prefix/...``. The table is built once per worker
(configuration plus the ``_routes`` each module declares) and then only looked
up. The most specific route wins::

    >>> table = RoutingTable([Route("/a/...", "x", (1, 0)), Route("/a/b", "y", (2, 0))])
    >>> table.match("/a/b").handler, table.match("/a/c").handler
    ('y', 'x')

Matching uses the raw, undecoded path, so ``/a%2Fb`` is not ``/a/b``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

H = TypeVar("H")

PREFIX_SUFFIX = "/..."
"""A route ending in this matches its base and everything below it: ``/a/...``."""


def route_base(pattern: str) -> str:
    """The pattern without its ``/...``: ``/a/...`` -> ``/a``; ``/...`` -> ``""``; ``/a`` stays."""
    return pattern.removesuffix(PREFIX_SUFFIX)


def validate_route(route: str) -> str:
    """Return ``route`` if it is ``/exact`` or ``/prefix/...``; raise ValueError otherwise."""
    if not isinstance(route, str) or not route.startswith("/"):
        raise ValueError(f"a route must start with '/', got {route!r}")
    if any(c.isspace() for c in route) or "?" in route or "#" in route:
        raise ValueError(f"a route cannot contain spaces, '?' or '#', got {route!r}")
    if "..." in route_base(route):
        raise ValueError(f"'...' may only end a route, as in '/path/...', got {route!r}")
    return route


@dataclass(frozen=True)
class Route(Generic[H]):
    """A route pattern and the handler it leads to.

    ``order`` breaks ties between equally specific routes: the lower (declared
    first) wins. Sub-routes of a module come right after their parent.
    """

    pattern: str
    handler: H
    order: tuple[int, int]

    @property
    def is_prefix(self) -> bool:
        return self.pattern.endswith(PREFIX_SUFFIX)

    @property
    def base(self) -> str:
        """The pattern without its ``/...``: the SCRIPT_NAME of every match."""
        return route_base(self.pattern)

    def matches(self, path: str) -> bool:
        if not self.is_prefix:
            return path == self.pattern
        base = self.base
        return path == base or path.startswith(base + "/") or base == ""

    def split(self, raw_path: str) -> tuple[str, str]:
        """``(SCRIPT_NAME, raw PATH_INFO)`` for a path this route matches."""
        return self.base, raw_path[len(self.base) :]


def join_subroute(parent: str, pattern: str) -> str:
    """The route of a ``_routes`` line: ``/routes/...`` + ``/hello`` -> ``/routes/hello``."""
    return validate_route(route_base(parent).rstrip("/") + "/" + pattern.lstrip("/"))


@dataclass(frozen=True)
class Match(Generic[H]):
    """A route that matched, with the path split the CGI way."""

    route: Route[H]
    script_name: str
    raw_path_info: str

    @property
    def handler(self) -> H:
        return self.route.handler


class RoutingTable(Generic[H]):
    """Every route of the server, ordered for lookup by specificity.

    A lookup costs the depth of the path, not the number of routes: exact routes are
    one dict lookup, and prefix routes are found by their base, trying the path's
    own ancestors (``/a/b/c``, ``/a/b``, ``/a``, then ``/...``) longest first.
    """

    def __init__(self, routes: Iterable[Route[H]]) -> None:
        self.exact: dict[str, Route[H]] = {}
        self.by_base: dict[str, Route[H]] = {}
        prefixes: list[Route[H]] = []
        for route in sorted(routes, key=lambda r: r.order):
            if route.is_prefix:
                prefixes.append(route)
                # Equal bases: the one declared first wins.
                self.by_base.setdefault(route.base, route)
            else:
                # Equal exact patterns: the one declared first wins.
                self.exact.setdefault(route.pattern, route)
        # Longest base first; sorted() is stable, so declaration order breaks ties.
        self.prefixes = sorted(prefixes, key=lambda r: -len(r.base))

    def routes(self) -> list[Route[H]]:
        """All routes, most specific first (the order lookups try them in)."""
        return [*self.exact.values(), *self.prefixes]

    def match(self, raw_path: str) -> Match[H] | None:
        route = self.exact.get(raw_path)
        if route is None:
            route = self._prefix_for(raw_path)
            if route is None:
                return None
        script_name, path_info = route.split(raw_path)
        return Match(route, script_name, path_info)

    def _prefix_for(self, raw_path: str) -> Route[H] | None:
        """The prefix route with the longest base that is ``raw_path`` or an ancestor of it."""
        by_base = self.by_base
        if not by_base:
            return None
        route = by_base.get(raw_path)
        end = len(raw_path)
        while route is None:
            end = raw_path.rfind("/", 0, end)
            if end < 0:
                return None
            route = by_base.get(raw_path[:end])  # "" at the root: the "/..." route
        return route
