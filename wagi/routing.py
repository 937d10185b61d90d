"""Routes and the routing table: how a request's host and path find what to run.

A route is ``/exact`` or ``/prefix/...``, optionally for one virtual host. The table
is built once per worker (configuration plus the ``_routes`` each module declares)
and then only looked up. The most specific route wins::

    >>> table = RoutingTable([Route("/a/...", "x", (1, 0)), Route("/a/b", "y", (2, 0))])
    >>> table.match("/a/b").handler, table.match("/a/c").handler
    ('y', 'x')

Matching uses the raw, undecoded path, so ``/a%2Fb`` is not ``/a/b``.

A route with a ``host`` answers only that host, and the routes of the request's host
come first, as an nginx ``server`` block would: the most specific of them that
matches wins; only when none matches do the routes without a host (which answer
every host) get their turn::

    >>> table = RoutingTable([Route("/api", "any", (1, 0)),
    ...                       Route("/...", "admin", (2, 0), host="admin.example.com")])
    >>> table.match("/api", "admin.example.com").handler, table.match("/api", "x.org").handler
    ('admin', 'any')
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

H = TypeVar("H")

PREFIX_SUFFIX = "/..."
"""A route ending in this matches its base and everything below it: ``/a/...``."""

_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


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


def validate_host(host: object) -> str:
    """A route's ``host`` as the table keys it (lowercase, no trailing dot); ValueError if
    it is not a DNS name (or an IPv6 address in brackets).

    >>> validate_host("Admin.Example.COM.")
    'admin.example.com'
    """
    if not isinstance(host, str):
        raise ValueError(f"expected a host name such as 'admin.example.com', got {host!r}")
    if "://" in host or "/" in host:
        raise ValueError(
            f"a host is a name without scheme or path, such as 'admin.example.com', got {host!r}"
        )
    if host.startswith("["):
        try:
            if not host.endswith("]"):
                raise ValueError
            return "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {host!r}") from None
    name = host.lower().removesuffix(".")
    if ":" in name:
        raise ValueError(
            f"a host is a name without a port (requests match whatever their port), got {host!r}"
        )
    labels = name.split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            "expected a DNS name: labels of letters, digits and inner '-', at most 63 "
            f"characters each, separated by '.', got {host!r}"
        )
    return name


def canonical_host(host: str) -> str:
    """A request's host (``Host`` header) as the table keys it: port dropped, lowercase,
    no trailing dot; an IPv6 literal keeps its brackets, compressed.

    >>> canonical_host("Admin.Example.com:8443"), canonical_host("[0:0::1]:80")
    ('admin.example.com', '[::1]')
    """
    if host.startswith("["):
        end = host.find("]")
        try:
            return "[" + ipaddress.IPv6Address(host[1:end]).compressed + "]"
        except ValueError:  # not an address: it can only match no host route
            return host[: end + 1].lower() if end > 0 else host.lower()
    name, colon, port = host.rpartition(":")
    if not colon or (port and not port.isdigit()):
        name = host
    return name.lower().removesuffix(".")


def request_host(environ: Mapping[str, object], default_host: str = "") -> str:
    """The host a WSGI request is for, keyed as the table keys hosts.

    The ``Host`` header (after :class:`~werkzeug.middleware.proxy_fix.ProxyFix`, the
    trusted proxy's ``X-Forwarded-Host``); without one, ``default_host`` (``--default-host``,
    the SERVER_NAME a module is given for such a request).
    """
    host = environ.get("HTTP_HOST") or default_host
    return canonical_host(host) if isinstance(host, str) else ""


@dataclass(frozen=True)
class Route(Generic[H]):
    """A route pattern, the host it answers (``None``: every host) and its handler.

    ``order`` breaks ties between equally specific routes: the lower (declared
    first) wins. Sub-routes of a module come right after their parent.
    """

    pattern: str
    handler: H
    order: tuple[int, int]
    host: str | None = None
    """Lowercase (see :func:`validate_host`); ``None`` answers every host."""

    @property
    def is_prefix(self) -> bool:
        return self.pattern.endswith(PREFIX_SUFFIX)

    @property
    def base(self) -> str:
        """The pattern without its ``/...``: the SCRIPT_NAME of every match."""
        return route_base(self.pattern)

    @property
    def label(self) -> str:
        """``/x``, or ``admin.example.com/x`` for a host's route: unique in a table."""
        return (self.host or "") + self.pattern

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


class PathTable(Generic[H]):
    """The routes of one host (or of every host), ordered for lookup by specificity.

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

    def find(self, raw_path: str) -> Route[H] | None:
        route = self.exact.get(raw_path)
        if route is None:
            route = self._prefix_for(raw_path)
        return route

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


class RoutingTable(Generic[H]):
    """Every route of the server: one :class:`PathTable` per virtual host, and one for
    the routes that answer every host.

    A request's host picks its table with one dict lookup; the most specific route
    there that matches wins. Only when the host has no table, or none of its routes
    matches, do the host-less routes get their turn, with the same rule.
    """

    def __init__(self, routes: Iterable[Route[H]]) -> None:
        everywhere: list[Route[H]] = []
        by_host: dict[str, list[Route[H]]] = {}
        for route in sorted(routes, key=lambda r: r.order):
            if route.host is None:
                everywhere.append(route)
            else:
                by_host.setdefault(route.host, []).append(route)
        self.any_host = PathTable(everywhere)
        self.hosts = {host: PathTable(rs) for host, rs in by_host.items()}
        """A table per host, in the order the hosts are first declared."""

    @property
    def exact(self) -> dict[str, Route[H]]:
        """The exact routes that answer every host, by pattern."""
        return self.any_host.exact

    @property
    def prefixes(self) -> list[Route[H]]:
        """The prefix routes that answer every host, longest base first."""
        return self.any_host.prefixes

    def routes(self) -> list[Route[H]]:
        """All routes in the order lookups try them: each host's (most specific first),
        then those of every host."""
        listed = [route for table in self.hosts.values() for route in table.routes()]
        return [*listed, *self.any_host.routes()]

    def match(self, raw_path: str, host: str | None = None) -> Match[H] | None:
        """The route for ``raw_path`` on ``host`` (as :func:`request_host` gives it)."""
        route = None
        if host is not None and self.hosts:
            table = self.hosts.get(host)
            if table is not None:
                route = table.find(raw_path)
        if route is None:
            route = self.any_host.find(raw_path)
            if route is None:
                return None
        script_name, path_info = route.split(raw_path)
        return Match(route, script_name, path_info)
