"""Where a ``[[module]]``'s ``module`` key points: a local file or an OCI artifact.

Parsing only names the module; :mod:`wagi.config.sources` turns either kind into a local
file at start-up (an OCI module is pulled, verified and cached).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalModule:
    """A module file on this machine (``module = "hello.wasm"``, an absolute path or ``file://``)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class OciModule:
    """A module published as an OCI artifact: ``oci://registry:5000/team/hello:1.0``.

    Parsing only names it; :mod:`wagi.config.sources` pulls it at start-up (``wagi check``),
    verifies it and sets ``path`` to the verified copy in the cache. A ``digest``
    pins the exact bytes; a ``tag`` alone is resolved to a digest at each start-up
    and reload.
    """

    registry: str
    """``host`` or ``host:port``, as written (no default registry)."""
    repository: str
    tag: str | None = None
    digest: str | None = None
    """``sha256:<64 hex digits>``: the manifest's digest."""
    path: Path | None = None
    """The pulled, verified module file; ``None`` until :mod:`wagi.config.sources` resolves it."""

    @property
    def reference(self) -> str:
        """``registry/repository[:tag][@digest]``, the usual way registries write it."""
        tail = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"{self.registry}/{self.repository}{tail}"

    @property
    def name(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return f"oci://{self.reference}"


ModuleSource = LocalModule | OciModule
"""Where a module comes from; :mod:`wagi.config.sources` turns either into a local file."""

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(f"{_PATH_PART}(?:/{_PATH_PART})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_OCI_FORMS = "oci://HOST[:PORT]/REPOSITORY:TAG or oci://HOST[:PORT]/REPOSITORY@sha256:DIGEST"


def parse_oci_reference(raw: str) -> OciModule:
    """``oci://host:5000/team/hello:1.0`` (or WAGI 0.8's ``oci:host/team/hello:1.0``) -> OciModule.

    The registry is always written out (there is no default registry); a tag or a
    digest is required (no implicit ``latest``); only sha256 digests are accepted.
    Raises ValueError saying what is wrong. No network: this only reads the string.

    >>> parse_oci_reference("oci://127.0.0.1:5000/team/hello:1.0").repository
    'team/hello'
    """
    if raw.startswith("oci://"):
        rest = raw[len("oci://") :]
    elif raw.startswith("oci:") and not raw.startswith("oci:/"):
        rest = raw[len("oci:") :]
    else:
        raise ValueError(f"expected {_OCI_FORMS}, got {raw!r}")
    registry, slash, name = rest.partition("/")
    if not slash or not _REGISTRY.fullmatch(registry):
        raise ValueError(f"expected {_OCI_FORMS} (the registry host comes first), got {raw!r}")
    name, at, digest = name.partition("@")
    repository, tag = name, None
    if ":" in name.rsplit("/", 1)[-1]:
        repository, _, tag = name.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise ValueError(
                f"{tag!r} is not a valid tag (letters, digits, '_', '.', '-'; "
                f"at most 128 characters) in {raw!r}"
            )
    if not _REPOSITORY.fullmatch(repository):
        raise ValueError(
            f"{repository!r} is not a valid repository name (lowercase letters and digits, "
            f"separated by '.', '_', '__' or '-', in '/'-separated parts) in {raw!r}"
        )
    if at and not _DIGEST.fullmatch(digest):
        raise ValueError(
            f"{digest!r} is not a sha256 digest (sha256: and 64 lowercase hex digits) in {raw!r}"
        )
    if tag is None and not at:
        raise ValueError(f"{raw!r} needs a tag (:1.0) or a digest (@sha256:...)")
    return OciModule(registry, repository, tag, digest or None)
