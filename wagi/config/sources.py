"""Where a module comes from: a file on this machine, or an OCI artifact pulled into the cache.

:mod:`wagi.config` only names a module (:class:`~wagi.config.LocalModule` or
:class:`~wagi.config.OciModule`); this module turns the name into a verified
local file, which an engine then compiles::

    modules.toml -> config (the name) -> sources (a verified file) -> engine (compiled)

A local module is its own file. An OCI module goes through two steps, in two
kinds of process:

**Pulling** (:func:`pull_modules`, network) happens where the configuration is
checked: ``wagi check`` (which gunicorn's ``on_starting`` and ``on_reload`` hooks
run in a fresh process), ``wagi run``. A tag is resolved to a manifest digest at
every check; a digest pin is not, and needs no network when the cache already
holds it. Every byte pulled is checked against its digest (the manifest against
the pin, the module layer against the digest in the manifest) before it is kept,
content-addressed, under ``<cache dir>/oci/blobs/sha256/``.

**Resolving** (:func:`resolve_modules`, no network) is how every process finds
the file: from the digest pin, or from the tag's digest that the check resolved
(the *pins*). ``wagi check --pins-file`` writes the pins; the gunicorn master
hands them to the workers it starts next in ``WAGI_OCI_PINS``. So workers load
exactly the bytes that were checked, and a tag moved in the registry changes
nothing until the next reload (SIGHUP) pulls it again; a worker that gunicorn
replaces in between still gets the checked version.

Publishing (:func:`push_module`, ``wagi push``) writes the artifact the way
wasm-to-oci and WAGI 0.8 did: one layer ``application/vnd.wasm.content.layer.v1+wasm``
holding the module, and an empty ``{}`` config of type
``application/vnd.wasm.config.v1+json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wagi.config import Config, ModuleEntry, OciModule
from wagi.config.registry import Registry, RegistryError, Unreachable, uses_plain_http
from wagi.config.settings import ServerSettings
from wagi.engines.base import EngineError, read_module

WASM_LAYER_TYPES = ("application/vnd.wasm.content.layer.v1+wasm", "application/wasm")
"""Layers that hold a module: wasm-to-oci's (WAGI 0.8, the one ``wagi push`` writes) and
the CNCF Wasm OCI artifact layout's."""
WASM_CONFIG_TYPE = "application/vnd.wasm.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ACCEPT = (OCI_MANIFEST, DOCKER_MANIFEST, *INDEX_TYPES)
TITLE_ANNOTATION = "org.opencontainers.image.title"
MAX_MANIFEST = 4 << 20
"""Bytes a manifest may have (the distribution spec's advice)."""
PINS_ENV = "WAGI_OCI_PINS"
"""How the gunicorn master tells its workers which digest each tag was resolved to."""
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


class SourceError(Exception):
    """A module cannot be pulled, found or published; the message says which and why."""


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``, the way registries name content."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobStore:
    """Verified blobs under ``<cache dir>/oci/blobs/sha256/<hex>``, named by their digest.

    A blob is written to a temporary file while its digest is computed and only
    renamed into place when the digest matches, so a file under its name always
    had the right content when written; readers check again (a damaged file is
    deleted and reported missing, never used).
    """

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir / "oci" / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        return self.root / digest.removeprefix("sha256:")

    def read(self, digest: str) -> bytes | None:
        """The blob, or ``None`` if it is absent or damaged."""
        try:
            data = self.path(digest).read_bytes()
        except OSError:
            return None
        if digest_of(data) != digest:
            self.discard(digest)
            return None
        return data

    def verified_path(self, digest: str) -> Path | None:
        """The blob's file if it is there and intact, else ``None``."""
        path = self.path(digest)
        sha = hashlib.sha256()
        try:
            with open(path, "rb") as blob:
                while chunk := blob.read(1 << 20):
                    sha.update(chunk)
        except OSError:
            return None
        if "sha256:" + sha.hexdigest() != digest:
            self.discard(digest)
            return None
        return path

    def put(self, digest: str, chunks: Iterable[bytes], size: int) -> str:
        """Store ``chunks`` as ``digest``; return the digest they actually have.

        Nothing is stored unless the digests match. Raises ValueError when the
        chunks are not exactly ``size`` bytes (reading stops past ``size``).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        sha = hashlib.sha256()
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    written += len(chunk)
                    if written > size:
                        raise ValueError(f"more than the {size} bytes its descriptor says")
                    sha.update(chunk)
                    out.write(chunk)
            if written != size:
                raise ValueError(f"{written} bytes, not the {size} its descriptor says")
            actual = "sha256:" + sha.hexdigest()
            if actual == digest:
                os.replace(tmp, self.path(digest))
            return actual
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def discard(self, digest: str) -> None:
        with contextlib.suppress(OSError):
            self.path(digest).unlink()


@dataclass(frozen=True)
class Layer:
    """The descriptor of the layer that holds the module."""

    digest: str
    size: int
    media_type: str


def wasm_layer(manifest: bytes, media_type: str = "") -> Layer:
    """The one WebAssembly layer of an image manifest; ValueError saying why not."""
    try:
        doc = json.loads(manifest)
    except ValueError:
        raise ValueError("the manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("the manifest is not a JSON object")
    kind = doc.get("mediaType") or media_type
    if kind in INDEX_TYPES or "manifests" in doc:
        raise ValueError(
            f"it is an image index ({kind}), not a single module: name one of its manifests "
            "by digest"
        )
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ValueError("the manifest has no layers")
    found = [
        layer
        for layer in layers
        if isinstance(layer, dict) and layer.get("mediaType") in WASM_LAYER_TYPES
    ]
    if len(found) != 1:
        kinds = ", ".join(
            str(layer.get("mediaType")) for layer in layers if isinstance(layer, dict)
        )
        count = "no" if not found else f"{len(found)}"
        raise ValueError(
            f"the artifact has {count} WebAssembly layers ({' or '.join(WASM_LAYER_TYPES)}); "
            f"its layers: {kinds or 'none'}"
        )
    layer = found[0]
    digest, size = layer.get("digest"), layer.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"the module layer's digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"the module layer's size {size!r} is not a byte count")
    return Layer(digest, size, str(layer["mediaType"]))


class Puller:
    """Pulls OCI modules into a :class:`BlobStore`, one :class:`Registry` client per host."""

    def __init__(
        self, cache_dir: Path, settings: ServerSettings, environ: Mapping[str, str] | None = None
    ) -> None:
        self.store = BlobStore(cache_dir)
        self.settings = settings
        self.environ = environ
        self._registries: dict[str, Registry] = {}

    def registry(self, host: str) -> Registry:
        if host not in self._registries:
            self._registries[host] = registry_for(host, self.settings, self.environ)
        return self._registries[host]

    def cached(self, digest: str) -> bool:
        """Whether the manifest ``digest`` and its module layer are in the store, intact."""
        manifest = self.store.read(digest)
        if manifest is None:
            return False
        try:
            layer = wasm_layer(manifest)
        except ValueError:
            return False
        return self.store.verified_path(layer.digest) is not None

    def pull(self, module: OciModule) -> str:
        """Make sure ``module`` is in the store; return its manifest digest.

        A digest pin already in the store needs no network. A tag always asks the
        registry what it points to now. Raises :class:`SourceError` saying what the
        registry answered.
        """
        if module.digest and self.cached(module.digest):
            return module.digest
        registry = self.registry(module.registry)
        reference = module.digest or module.tag or ""
        try:
            body, media_type = registry.get_manifest(
                module.repository, reference, ACCEPT, MAX_MANIFEST
            )
        except RegistryError as exc:
            raise SourceError(f"{module}: {self.explain(registry, module, exc)}") from None
        digest = digest_of(body)
        if module.digest and digest != module.digest:
            raise SourceError(
                f"{module}: the registry sent a manifest whose digest is {digest}, not the "
                f"pinned {module.digest}; refused"
            )
        try:
            layer = wasm_layer(body, media_type)
        except ValueError as exc:
            raise SourceError(f"{module}: {exc}") from None
        if self.store.verified_path(layer.digest) is None:
            try:
                actual = self.store.put(
                    layer.digest, registry.read_blob(module.repository, layer.digest), layer.size
                )
            except RegistryError as exc:
                raise SourceError(f"{module}: module layer {layer.digest}: {exc}") from None
            except ValueError as exc:
                raise SourceError(
                    f"{module}: the registry sent {exc} for module layer {layer.digest}; refused"
                ) from None
            except OSError as exc:
                raise SourceError(
                    f"{module}: cannot store the module in {self.store.root}: {exc}"
                ) from None
            if actual != layer.digest:
                raise SourceError(
                    f"{module}: the registry sent a module layer whose digest is {actual}, "
                    f"not {layer.digest} as its manifest says; refused"
                )
        # The manifest goes in last: a manifest in the store means its module is there too.
        self.store.put(digest, [body], len(body))
        return digest

    def explain(self, registry: Registry, module: OciModule, exc: RegistryError) -> str:
        """What a failed manifest request means for this module, in the user's terms."""
        if isinstance(exc, Unreachable) and module.digest is None:
            return (
                f"{exc}; a tag is resolved at every start-up, so the registry must answer "
                "(pin a digest, @sha256:..., to start from the cache without it)"
            )
        no_repository = f"the registry has no repository {module.repository!r} ({exc})"
        if exc.status != 404:
            return str(exc)
        if "NAME_UNKNOWN" in exc.codes:
            return no_repository
        # Registries answer MANIFEST_UNKNOWN for a repository they do not know too;
        # the tag list tells the two apart (and shows what the tag could have been).
        try:
            tags = registry.tags(module.repository)
        except RegistryError as listing:
            if listing.status == 404:
                return f"the registry has no repository {module.repository!r} ({listing})"
            tags = []
        if module.digest:
            return f"the repository {module.repository!r} has no manifest {module.digest} ({exc})"
        known = ", ".join(sorted(tags)[:20]) or "none"
        return (
            f"the repository {module.repository!r} has no tag {module.tag!r} ({exc}); "
            f"its tags: {known}"
        )


def registry_for(
    host: str, settings: ServerSettings, environ: Mapping[str, str] | None = None
) -> Registry:
    """A client for ``host`` with the transport and trust the settings give it."""
    return Registry(
        host,
        plain_http=uses_plain_http(host, settings.oci_plain_http),
        ca_file=settings.oci_ca_file,
        environ=environ,
    )


def _where(config: Config, entry: ModuleEntry) -> str:
    return f"{config.path}: [[module]] #{entry.index} (route {entry.route!r}), key 'module'"


def pull_modules(
    config: Config, settings: ServerSettings, environ: Mapping[str, str] | None = None
) -> tuple[Config, dict[str, str]]:
    """Pull every OCI module of ``config``; the resolved config and the tags' pins.

    Each distinct reference is pulled once. Raises :class:`SourceError` naming the
    file, the route, the reference and what the registry said.
    """
    entries = [e for e in config.modules if isinstance(e.module, OciModule)]
    if not entries:
        return config, {}
    if settings.cache_dir is None:
        raise SourceError(
            f"{_where(config, entries[0])}: OCI modules are kept in the cache directory, "
            "and --cache-dir is '' (disabled)"
        )
    puller = Puller(settings.cache_dir, settings, environ)
    pins: dict[str, str] = {}
    pulled: dict[str, str] = {}
    for entry in entries:
        assert isinstance(entry.module, OciModule)
        module = entry.module
        if module.reference not in pulled:
            try:
                pulled[module.reference] = puller.pull(module)
            except SourceError as exc:
                raise SourceError(f"{_where(config, entry)}: {exc}") from None
        if module.digest is None:
            pins[module.reference] = pulled[module.reference]
    return resolve_modules(config, settings.cache_dir, pins), pins


def resolve_modules(config: Config, cache_dir: Path | None, pins: Mapping[str, str]) -> Config:
    """``config`` with every OCI module's ``path`` set to its verified file; no network.

    A digest pin names its manifest; a tag is looked up in ``pins`` (what the last
    check resolved it to). Raises :class:`SourceError` when something is missing
    from the cache or damaged.
    """
    entries = []
    for entry in config.modules:
        module = entry.module
        if isinstance(module, OciModule):
            try:
                module = _resolve(module, cache_dir, pins)
            except SourceError as exc:
                raise SourceError(f"{_where(config, entry)}: {exc}") from None
            entry = dataclasses.replace(entry, module=module)
        entries.append(entry)
    return dataclasses.replace(config, modules=tuple(entries))


def _resolve(module: OciModule, cache_dir: Path | None, pins: Mapping[str, str]) -> OciModule:
    if cache_dir is None:
        raise SourceError(f"{module}: OCI modules need a cache directory (--cache-dir)")
    store = BlobStore(cache_dir)
    digest = module.digest or pins.get(module.reference)
    if digest is None:
        raise SourceError(
            f"{module}: no digest was resolved for this tag; the tag is resolved by "
            "wagi check, which wagi's gunicorn hooks (gunicorn.conf.py) run at start-up"
        )
    manifest = store.read(digest)
    if manifest is None:
        raise SourceError(
            f"{module}: manifest {digest} is not in the cache ({store.root}); wagi check pulls it"
        )
    try:
        layer = wasm_layer(manifest)
    except ValueError as exc:
        raise SourceError(f"{module}: {exc}") from None
    path = store.verified_path(layer.digest)
    if path is None:
        raise SourceError(
            f"{module}: module layer {layer.digest} is missing from the cache or damaged "
            f"({store.root}); wagi check pulls it again"
        )
    return dataclasses.replace(module, path=path)


def pins_from_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The pins the gunicorn master passed in ``WAGI_OCI_PINS`` (``{}`` if none)."""
    environ = os.environ if environ is None else environ
    return parse_pins(environ.get(PINS_ENV) or "{}", PINS_ENV)


def parse_pins(text: str, where: str) -> dict[str, str]:
    """``{"host/repo:tag": "sha256:..."}`` from JSON; SourceError if it is anything else."""
    try:
        pins: Any = json.loads(text)
    except ValueError:
        pins = None
    if not isinstance(pins, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _DIGEST.fullmatch(v) for k, v in pins.items()
    ):
        raise SourceError(f"{where}: expected a JSON object of tag references to sha256 digests")
    return dict(pins)


def push_module(
    path: Path,
    target: OciModule,
    settings: ServerSettings,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Publish the module at ``path`` as ``target`` (which needs a tag); its manifest digest.

    A ``.wat`` file is assembled first, so the artifact always holds a binary
    module. Blobs the registry already has are not sent again.
    """
    if target.tag is None or target.digest is not None:
        raise SourceError(
            f"{target}: wagi push needs a tag and no digest, as in oci://HOST/REPO:TAG"
        )
    try:
        wasm = read_module(path)
    except EngineError as exc:
        raise SourceError(str(exc)) from None
    config_blob = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": WASM_CONFIG_TYPE,
            "digest": digest_of(config_blob),
            "size": len(config_blob),
        },
        "layers": [
            {
                "mediaType": WASM_LAYER_TYPES[0],
                "digest": digest_of(wasm),
                "size": len(wasm),
                "annotations": {TITLE_ANNOTATION: path.with_suffix(".wasm").name},
            }
        ],
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    digest = digest_of(body)
    registry = registry_for(target.registry, settings, environ)
    try:
        for blob in (config_blob, wasm):
            if not registry.has_blob(target.repository, digest_of(blob)):
                registry.upload_blob(target.repository, digest_of(blob), blob)
        stored = registry.put_manifest(target.repository, target.tag, body, OCI_MANIFEST)
    except RegistryError as exc:
        raise SourceError(f"{target}: {exc}") from None
    if stored and stored != digest:
        raise SourceError(f"{target}: the registry stored the manifest as {stored}, not {digest}")
    return digest
