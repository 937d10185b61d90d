"""Which origins a route's module may reach over HTTP, decided once at start-up from
``modules.toml``: pure values and functions, no I/O (the client and the ABI sit on them).

The rules (docs/configuration.md, ``allowed_hosts``; docs/security.md):

- **Deny by default.** ``allowed_hosts`` lists origins, ``scheme://host[:port]``; a
  URL is allowed when its scheme, host and port (the scheme's default when absent)
  equal one entry's. WAGI 0.8 compared the host name only; comparing the whole
  origin means ``https://api.example.com`` does not open ``http://api.example.com:6379``.
- **SSRF guard.** The addresses that are loopback, link-local, unspecified, multicast or a
  cloud metadata service (:func:`is_special_address`) are refused unless the allow-list
  entry is that IP address itself (:meth:`Origin.admits`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_HANDLES = 64
"""Responses one run may hold open at once, whatever ``http_max_concurrency`` says:
each holds a connection (a file descriptor of the worker)."""
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
"""The Rust guest crate reads the header map into 64 KiB; so does the default cap."""
DEFAULT_MAX_BODY_BYTES = 16 * 1024**2
U32 = 0xFFFFFFFF
DEFAULT_PORTS = {"http": 80, "https": 443}

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
    )
)


@dataclass(frozen=True)
class Origin:
    """One ``allowed_hosts`` entry: ``scheme://host[:port]``.

    >>> Origin.parse("https://API.example.com")
    Origin(scheme='https', host='api.example.com', port=443)
    >>> Origin.parse("http://127.0.0.1:8080").port
    8080
    """

    scheme: str
    host: str
    """Lower case; an IPv6 literal without brackets; IDNA (punycode) for non-ASCII names."""
    port: int

    @classmethod
    def parse(cls, text: object) -> Origin:
        """Parse one entry; ValueError with a message fit for the user."""
        if not isinstance(text, str):
            raise ValueError(f"expected an origin such as 'https://api.example.com', got {text!r}")
        parts = urlsplit(text.strip())
        if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
            raise ValueError(
                f"{text!r} is not an origin: expected http:// or https://, a host and an "
                "optional port, such as 'https://api.example.com' or 'http://127.0.0.1:8080'"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(
                f"{text!r}: an allowed host is an origin (scheme, host, optional port); "
                "paths, queries and user names cannot be restricted here"
            )
        try:
            host, port = host_and_port(parts)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        return cls(parts.scheme, host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS[self.scheme] == self.port
        return f"{self.scheme}://{host}" + ("" if default else f":{self.port}")

    @property
    def names_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The IP address this entry names literally, if it does."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def admits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether a connection to ``address`` may serve this origin (the SSRF guard)."""
        if not is_special_address(address):
            return True
        named = self.names_address
        return named is not None and _unmapped(named) == _unmapped(address)


def host_and_port(parts: SplitResult) -> tuple[str, int]:
    try:
        port = parts.port
    except ValueError:
        raise ValueError("invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError("no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("invalid host name") from None
    if port == 0:
        raise ValueError("invalid port 0")
    return host.rstrip(".") or host, port or DEFAULT_PORTS[parts.scheme]


def _unmapped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address inside an IPv4-mapped, -compatible or NAT64 IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & U32)
    return address


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_special_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, link-local, unspecified, multicast, broadcast or cloud metadata.

    Private networks (10/8, 192.168/16, fc00::/7, ...) are not special: an internal
    API on one is a legitimate destination once its origin is allowed.

    >>> is_special_address(ipaddress.ip_address("169.254.169.254"))
    True
    >>> is_special_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    True
    >>> is_special_address(ipaddress.ip_address("10.1.2.3"))
    False
    """
    address = _unmapped(address)
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address in METADATA_ADDRESSES
        or (isinstance(address, ipaddress.IPv4Address) and address in _ZERO_NET)
        or address == ipaddress.IPv4Address("255.255.255.255")
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


_ZERO_NET = ipaddress.ip_network("0.0.0.0/8")


def parse_allowed_hosts(value: object) -> tuple[Origin, ...]:
    """``allowed_hosts`` from modules.toml: a list of origins (empty: deny all)."""
    if not isinstance(value, list):
        raise ValueError(
            f'expected a list of origins such as ["https://api.example.com"], got {value!r}'
        )
    origins = tuple(Origin.parse(item) for item in value)
    return tuple(dict.fromkeys(origins))


def parse_max_concurrency(value: object) -> int:
    """``http_max_concurrency``: a positive integer, at most :data:`MAX_HANDLES`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    if value > MAX_HANDLES:
        raise ValueError(
            f"{value} is above wagi's limit of {MAX_HANDLES} responses open at once per run"
        )
    return value


@dataclass(frozen=True)
class OutboundPolicy:
    """What one route's module may do over HTTP; built once at start-up."""

    allowed: tuple[Origin, ...] = ()
    """Origins the module may reach; empty denies everything."""
    max_concurrency: int | None = None
    """``http_max_concurrency``: responses open at once (``None``: :data:`MAX_HANDLES`)."""
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @property
    def max_open(self) -> int:
        return min(self.max_concurrency or MAX_HANDLES, MAX_HANDLES)

    def origin_for(self, scheme: str, host: str, port: int) -> Origin | None:
        for origin in self.allowed:
            if origin.scheme == scheme and origin.host == host and origin.port == port:
                return origin
        return None


DENY_ALL = OutboundPolicy()
