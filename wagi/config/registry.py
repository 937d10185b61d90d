"""A client for the OCI distribution API, spoken over ``requests``.

:mod:`wagi.config.sources` pulls and pushes modules through it. It knows the HTTP side
only: manifests and blobs of a repository, how registries ask for credentials,
and how to say in one sentence what a registry answered. It knows nothing about
WebAssembly. Example::

    registry = Registry("127.0.0.1:5000", plain_http=True)
    body, media_type = registry.get_manifest("team/hello", "1.0", accept=MANIFEST_TYPES)

**Transport.** HTTPS with certificate verification against the system's CAs, or
against ``--oci-ca-file`` alone when given. Plain HTTP only for the registries
that ``--oci-plain-http`` names; its default, ``loopback``, means every registry
on ``localhost``, 127.0.0.0/8 or ``[::1]``, as docker treats them. No retries: a
start-up check that fails says so at once.

**Authentication** (the distribution spec and Docker's token flow). Requests go
out with the answer to the last challenge, if any. A ``401`` names the scheme in
``WWW-Authenticate``:

- ``Basic realm="..."``: retry with the user name and password;
- ``Bearer realm="...",service="...",scope="..."``: ask the realm for a token for
  that service and scope (with the user name and password as Basic credentials,
  or anonymously without), then retry with ``Authorization: Bearer <token>``; a
  configured token (``WAGI_OCI_TOKEN``) is sent as it is instead.

Credentials are looked up only when a registry asks (:func:`find_credentials`),
so registries that do not ask never see them. A second ``401`` is an
:class:`AuthError` saying where the refused credentials came from.

**Why not** ``oras`` **from PyPI**: it verifies no digest, fixes Basic or token
authentication when its client is created, retries every failure for 131 s and
reduces the registry's errors to ``ValueError``; ``docs/oci.md`` has the details.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import os
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from werkzeug.datastructures import WWWAuthenticate

from wagi import __version__

ENV_USERNAME = "WAGI_OCI_USERNAME"
ENV_PASSWORD = "WAGI_OCI_PASSWORD"
ENV_TOKEN = "WAGI_OCI_TOKEN"
CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a registry (or token service) to accept a connection."""
READ_TIMEOUT = 60.0
"""Seconds to wait for the next bytes of an answer."""
LOOPBACK = "loopback"


class RegistryError(Exception):
    """A request to a registry failed; the message says what the registry answered.

    ``status`` is the HTTP status (``None`` when there was no answer) and
    ``codes`` the distribution error codes of the answer (``MANIFEST_UNKNOWN``, ...).
    """

    def __init__(self, message: str, status: int | None = None, codes: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        self.codes = codes


class Unreachable(RegistryError):
    """No HTTP answer at all: refused, unresolvable, timed out or a TLS failure."""


class AuthError(RegistryError):
    """The registry wants credentials that wagi does not have, or refused them."""


@dataclass(frozen=True)
class Credentials:
    """What to answer a registry's challenge with, and where it came from (for messages)."""

    source: str
    """``WAGI_OCI_USERNAME/WAGI_OCI_PASSWORD``, ``WAGI_OCI_TOKEN`` or a config file's path."""
    username: str | None = None
    password: str | None = None
    token: str | None = None


def docker_config_path(environ: Mapping[str, str]) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (as docker reads it)."""
    base = environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def _auths_key(key: str) -> str:
    """``https://registry:5000/v1/`` -> ``registry:5000``: docker writes both forms."""
    if "://" in key:
        key = urlsplit(key).netloc
    return key.split("/", 1)[0]


def find_credentials(registry: str, environ: Mapping[str, str] | None = None) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]``), or ``None`` if there are none.

    In order: ``WAGI_OCI_TOKEN`` (a bearer token, sent as is); ``WAGI_OCI_USERNAME``
    and ``WAGI_OCI_PASSWORD``; the ``auths`` entry for the registry in Docker's
    config file (``auth`` = base64 of ``user:password``, or ``username`` and
    ``password``, or ``registrytoken``). The variables apply to every registry
    that asks; the config file is per registry. Credential helpers
    (``credsStore``, ``credHelpers``) are not run. Raises :class:`AuthError` for
    half-set variables or an unreadable config file.
    """
    environ = os.environ if environ is None else environ
    if environ.get(ENV_TOKEN):
        return Credentials(ENV_TOKEN, token=environ[ENV_TOKEN])
    username, password = environ.get(ENV_USERNAME), environ.get(ENV_PASSWORD)
    if username or password:
        if not (username and password):
            missing = ENV_PASSWORD if username else ENV_USERNAME
            given = ENV_USERNAME if username else ENV_PASSWORD
            raise AuthError(f"{given} is set but {missing} is not")
        return Credentials(f"{ENV_USERNAME}/{ENV_PASSWORD}", username=username, password=password)
    path = docker_config_path(environ)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read the Docker config file {path}: {exc}") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    entry = next(
        (v for k, v in (auths or {}).items() if _auths_key(k) == registry and isinstance(v, dict)),
        None,
    )
    if entry is None:
        return None
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, TypeError):
            decoded = ""
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise AuthError(f"{path}: auths[{registry!r}].auth is not base64 of 'user:password'")
        return Credentials(str(path), username=user, password=secret)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(path), username=entry["username"], password=entry["password"])
    if entry.get("registrytoken"):
        return Credentials(str(path), token=entry["registrytoken"])
    return None


def uses_plain_http(registry: str, policy: str) -> bool:
    """Whether ``registry`` is reached over plain HTTP under ``--oci-plain-http`` ``policy``.

    ``policy`` is a comma-separated list of ``host[:port]`` and the word
    ``loopback`` (``localhost``, 127.0.0.0/8 and ``::1``: the name is not looked up).

    >>> uses_plain_http("127.0.0.1:5000", "loopback"), uses_plain_http("ghcr.io", "loopback")
    (True, False)
    """
    items = {item.strip() for item in policy.split(",") if item.strip()}
    if registry in items:
        return True
    if LOOPBACK not in items:
        return False
    host = urlsplit(f"//{registry}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    """The root cause of a failed connection, in a few words."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed: {cause.reason or cause}"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[0].lower() + cause.strerror[1:]
        inner = getattr(cause, "reason", None)
        args = getattr(cause, "args", ())
        cause = (
            cause.__cause__
            or (inner if isinstance(inner, BaseException) else None)
            or (args[0] if args and isinstance(args[0], BaseException) else None)
            or cause.__context__
        )
    return str(exc)


def _errors(response: requests.Response) -> list[dict[str, Any]]:
    """The ``errors`` of a distribution error body (``[]`` for any other body)."""
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        return []
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def describe_answer(response: requests.Response) -> str:
    """``404 MANIFEST_UNKNOWN: manifest unknown``: the status and the registry's own words."""
    errors = _errors(response)
    if errors:
        code, message = errors[0].get("code", ""), errors[0].get("message", "")
        return f"{response.status_code} {code}: {message}".strip().rstrip(":")
    return f"{response.status_code} {response.reason}".strip()


def _codes(response: requests.Response) -> tuple[str, ...]:
    return tuple(str(e.get("code", "")) for e in _errors(response))


class Registry:
    """One registry (``host[:port]``): requests with authentication and readable errors."""

    def __init__(
        self,
        registry: str,
        *,
        plain_http: bool = False,
        ca_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.base_url = f"{'http' if plain_http else 'https'}://{registry}"
        self.environ = os.environ if environ is None else environ
        self.verify: str | bool = str(ca_file) if ca_file is not None else True
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"wagi/{__version__}"
        # Not requests' environment handling: ~/.netrc would replace the Authorization
        # header and REQUESTS_CA_BUNDLE would win over --oci-ca-file. Proxies from
        # HTTPS_PROXY/NO_PROXY are still honoured, explicitly (_options).
        self.session.trust_env = False
        self._authorization: str | None = None
        self._credentials: Credentials | None = None
        self._looked_up = False

    # -- the distribution API -------------------------------------------------

    def get_manifest(
        self, repository: str, reference: str, accept: Iterable[str], limit: int
    ) -> tuple[bytes, str]:
        """The manifest's exact bytes and its media type (``Content-Type``).

        Raises :class:`RegistryError` if it is larger than ``limit`` bytes (the rest is
        not read).
        """
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(accept)},
            stream=True,
        )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        body = b""
        with response:
            try:
                for chunk in response.iter_content(1 << 16):
                    body += chunk
                    if len(body) > limit:
                        raise RegistryError(f"the manifest is larger than {limit} bytes")
            except requests.RequestException as exc:
                raise Unreachable(
                    f"the connection to {self.base_url} broke while reading a manifest: "
                    f"{_reason(exc)}"
                ) from None
        return body, media_type

    def read_blob(self, repository: str, digest: str) -> Iterator[bytes]:
        """The blob's bytes, in chunks, as they arrive (the caller checks the digest)."""
        response = self.request("GET", f"/v2/{repository}/blobs/{digest}", stream=True)
        with response:
            try:
                yield from response.iter_content(1 << 16)
            except requests.RequestException as exc:
                raise Unreachable(
                    f"the connection to {self.base_url} broke while reading {digest}: "
                    f"{_reason(exc)}"
                ) from None

    def tags(self, repository: str) -> list[str]:
        """The repository's tags (the first page the registry gives)."""
        response = self.request("GET", f"/v2/{repository}/tags/list")
        try:
            tags = response.json().get("tags") or []
        except (ValueError, AttributeError):
            return []
        return [str(tag) for tag in tags]

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", expect=(200, 404))
        return response.status_code == 200

    def upload_blob(self, repository: str, digest: str, data: bytes) -> None:
        """Upload ``data`` in one piece (a POST opens the upload, a PUT closes it)."""
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/", expect=(202,))
        location = started.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.base_url} opened an upload without a Location header")
        self.request(
            "PUT",
            urljoin(self.base_url + "/", location),
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
            data=data,
            expect=(201,),
        )

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest under a tag; the registry's ``Docker-Content-Digest``, if any."""
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Content-Type": media_type},
            data=body,
            expect=(201,),
        )
        return response.headers.get("Docker-Content-Digest", "")

    # -- requests, authentication and errors ----------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send a request, answer one authentication challenge, check the status.

        Raises :class:`Unreachable`, :class:`AuthError` or :class:`RegistryError`
        (with the status and the registry's error codes) for anything not in
        ``expect``.
        """
        url = path if "://" in path else self.base_url + path
        response = self._send(method, url, headers, params, data, stream)
        if response.status_code == 401:
            _drain(response)
            self._authorization = self._answer(response)
            response = self._send(method, url, headers, params, data, stream)
            if response.status_code == 401:
                _drain(response)
                if self._lookup() is None:
                    raise self._no_credentials(response)
                raise AuthError(
                    f"the registry refused the credentials from {self._credential_source()} "
                    f"({describe_answer(response)})",
                    401,
                    _codes(response),
                )
        if response.status_code not in expect:
            _drain(response)
            if response.status_code == 403:
                raise AuthError(
                    f"the registry denied access with the credentials from "
                    f"{self._credential_source()} ({describe_answer(response)})",
                    403,
                    _codes(response),
                )
            raise RegistryError(describe_answer(response), response.status_code, _codes(response))
        return response

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        data: bytes | None,
        stream: bool,
    ) -> requests.Response:
        sent = dict(headers or {})
        if self._authorization:
            sent["Authorization"] = self._authorization
        try:
            return self.session.request(
                method,
                url,
                headers=sent,
                params=params,
                data=data,
                stream=stream,
                **self._options(url),
            )
        except requests.Timeout:
            raise Unreachable(
                f"cannot reach the registry at {self.base_url}: no answer within "
                f"{CONNECT_TIMEOUT:g} s"
            ) from None
        except requests.RequestException as exc:
            raise Unreachable(
                f"cannot reach the registry at {self.base_url} ({_reason(exc)})"
            ) from None

    def _options(self, url: str) -> dict[str, Any]:
        return {
            "verify": self.verify,
            "proxies": requests.utils.get_environ_proxies(url),
            "timeout": (CONNECT_TIMEOUT, READ_TIMEOUT),
        }

    def _lookup(self) -> Credentials | None:
        if not self._looked_up:
            self._credentials = find_credentials(self.registry, self.environ)
            self._looked_up = True
        return self._credentials

    def _credential_source(self) -> str:
        credentials = self._lookup()
        return credentials.source if credentials else "nowhere (anonymous)"

    def _no_credentials(self, response: requests.Response) -> AuthError:
        return AuthError(
            f"the registry requires authentication ({describe_answer(response)}) and wagi has "
            f"no credentials for {self.registry}: set {ENV_USERNAME} and {ENV_PASSWORD} "
            f"(or {ENV_TOKEN}), or log in with docker login "
            f"({docker_config_path(self.environ)})",
            401,
            _codes(response),
        )

    def _answer(self, response: requests.Response) -> str:
        """The ``Authorization`` value that answers the 401 ``response``'s challenge."""
        challenge = WWWAuthenticate.from_header(response.headers.get("WWW-Authenticate"))
        credentials = self._lookup()
        scheme = challenge.type if challenge is not None else ""
        if scheme == "basic":
            if credentials is None or credentials.username is None:
                raise self._no_credentials(response)
            return _basic(credentials.username, credentials.password or "")
        if scheme != "bearer" or challenge is None or not challenge.get("realm"):
            raise AuthError(
                f"the registry asked for authentication wagi does not know "
                f"({describe_answer(response)}; WWW-Authenticate: "
                f"{response.headers.get('WWW-Authenticate', 'missing')!r})",
                401,
            )
        if credentials is not None and credentials.token is not None:
            return f"Bearer {credentials.token}"
        return f"Bearer {self._fetch_token(challenge, credentials, response)}"

    def _fetch_token(
        self,
        challenge: WWWAuthenticate,
        credentials: Credentials | None,
        challenged: requests.Response,
    ) -> str:
        realm = str(challenge.get("realm"))
        params = {k: challenge[k] for k in ("service", "scope") if challenge.get(k)}
        headers = {}
        if credentials is not None and credentials.username is not None:
            headers["Authorization"] = _basic(credentials.username, credentials.password or "")
        try:
            answer = self.session.get(realm, params=params, headers=headers, **self._options(realm))
        except requests.RequestException as exc:
            raise Unreachable(
                f"cannot reach the registry's token service at {realm} ({_reason(exc)})"
            ) from None
        if answer.status_code in (401, 403):
            if credentials is None:
                raise self._no_credentials(challenged)
            raise AuthError(
                f"the token service at {realm} refused the credentials from "
                f"{credentials.source} ({describe_answer(answer)})",
                answer.status_code,
            )
        if answer.status_code != 200:
            raise AuthError(
                f"the token service at {realm} answered {describe_answer(answer)}",
                answer.status_code,
            )
        try:
            body = answer.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise AuthError(f"the token service at {realm} answered no token")
        return token


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _drain(response: requests.Response) -> None:
    """Read a (small) error body, so it can be described and the connection reused."""
    with contextlib.suppress(requests.RequestException):
        _ = response.content
