"""Modules from OCI registries, against real registries (CNCF distribution) on loopback.

Every registry here is Debian's ``docker-registry`` started by the test on a free
port of 127.0.0.1, with filesystem storage in a temporary directory: open, behind
htpasswd (Basic), behind the token flow (Bearer tokens from a token service that
the tests run), and over TLS with a CA of their own. wagi pushes with ``wagi
push``, pulls in ``wagi check`` (and gunicorn's start-up and reload hooks) and
serves through real gunicorn workers.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import wasmtime
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from wagi.config import ConfigError, LocalModule, OciModule, load_config, parse_oci_reference
from wagi.config.registry import AuthError, find_credentials, uses_plain_http
from wagi.config.registry import Registry as WagiRegistry
from wagi.config.settings import SettingsError
from wagi.config.settings import load as load_settings
from wagi.config.sources import SourceError, pull_modules, resolve_modules

from ..support.servers import ROOT, Server, free_port, start_gunicorn, stop_process, write_config
from ..support.workers import worker_pids

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HTPASSWD_BIN = shutil.which("htpasswd") or "/usr/bin/htpasswd"
LAYER_TYPE = "application/vnd.wasm.content.layer.v1+wasm"
CONFIG_TYPE = "application/vnd.wasm.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ZERO_DIGEST = "sha256:" + "0" * 64


# -- modules ------------------------------------------------------------------


def module_wat(text: str) -> str:
    """A module whose response is ``text`` (a CGI response written with one fd_write)."""
    body = f"Content-Type: text/plain\n\n{text}\n"
    quoted = body.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f"""(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{quoted}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {len(body.encode())}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def write_module(directory: Path, text: str, name: str = "hello.wat") -> tuple[Path, bytes]:
    """A .wat module answering ``text``; its path and the wasm bytes ``wagi push`` sends."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(module_wat(text))
    return path, bytes(wasmtime.wat2wasm(module_wat(text)))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- processes ----------------------------------------------------------------


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The test's environment without WAGI_* variables and with an empty Docker config dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAGI_")}
    (tmp / "docker").mkdir(parents=True, exist_ok=True)
    env["DOCKER_CONFIG"] = str(tmp / "docker")
    env.update(extra)
    return env


def wagi(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wagi", *args],
        cwd=ROOT,
        env=clean_env(tmp, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def push(tmp: Path, module: Path, reference: str, **env: str) -> str:
    """``wagi push``; the digest it printed."""
    result = wagi(tmp, "push", str(module), reference, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def check(tmp: Path, config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cache = str(tmp / "cache")
    return wagi(
        tmp, "check", "--quiet", "--config", str(config), "--cache-dir", cache, *args, **env
    )


def serve(tmp: Path, config: Path, engine: str = "auto", **env: str) -> Server:
    return start_gunicorn(tmp, config, engine, workers=1, extra_env={**clean_env(tmp), **env})


# -- registries ---------------------------------------------------------------


@dataclass
class Registry:
    """A running ``docker-registry serve``."""

    process: subprocess.Popen[bytes]
    host: str
    """``127.0.0.1:<port>``, as modules.toml names it."""
    storage: Path
    log: Path

    def ref(self, name: str) -> str:
        return f"oci://{self.host}/{name}"

    def stored_blob(self, digest: str) -> Path:
        """Where the registry's filesystem storage keeps a blob (to damage it)."""
        hex_digest = digest.removeprefix("sha256:")
        return (
            self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
        )

    def stop(self) -> None:
        stop_process(self.process)


def start_registry(tmp: Path, extra: str = "", scheme: str = "http") -> Registry:
    """A registry on a free loopback port, storing into ``tmp``; ``extra`` is more YAML."""
    if not Path(REGISTRY_BIN).exists():
        pytest.fail(
            "docker-registry is not installed (apt-get install docker-registry); "
            "./run-tests installs it"
        )
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp}/storage\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + extra
    )
    log = tmp / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    registry = Registry(process, f"127.0.0.1:{port}", tmp / "storage", log)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return registry
        except OSError:
            if time.monotonic() > deadline:
                registry.stop()
                raise RuntimeError(f"docker-registry did not listen:\n{log.read_text()}") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An open registry (no authentication), over plain HTTP."""
    running = start_registry(tmp_path_factory.mktemp("registry"))
    yield running
    running.stop()


USER, PASSWORD = "wagi-user", "s3cret pass"


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind htpasswd (bcrypt): HTTP Basic authentication."""
    tmp = tmp_path_factory.mktemp("basic-registry")
    if not Path(HTPASSWD_BIN).exists():
        pytest.fail("htpasswd is not installed (apt-get install apache2-utils)")
    line = subprocess.run(
        [HTPASSWD_BIN, "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp / "htpasswd").write_text(line + "\n")
    running = start_registry(
        tmp, f"auth:\n  htpasswd:\n    realm: wagi-test\n    path: {tmp}/htpasswd\n"
    )
    yield running
    running.stop()


# -- certificates and a token service ---------------------------------------------


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    """A certificate for ``key``, self-signed or signed by ``issuer``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        # Key identifiers: Python 3.13's default context verifies strictly (VERIFY_X509_STRICT)
        # and refuses a chain without them, as a real CA's certificates have.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                (issuer[1] if issuer else key).public_key()
            ),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


SERVICE, ISSUER = "wagi-test-registry", "wagi-test-tokens"


class TokenService:
    """The token endpoint of Docker's token flow: checks Basic credentials, signs a JWT.

    The JWT carries its signing certificate (``x5c``), which the registry trusts
    through its ``rootcertbundle``. Anonymous requests get a token with no access,
    as public registries give for private repositories.
    """

    def __init__(self, tmp: Path) -> None:
        self.key = new_key()
        self.cert = certificate("wagi test token signer", self.key, ca=True)
        self.bundle = tmp / "token-signer.pem"
        self.bundle.write_bytes(pem(self.cert))
        self.requests: list[dict[str, str]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                service.requests.append(query)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                given = self.headers.get("Authorization")
                if given is not None and given != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": service.token(query, given is not None)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, query: dict[str, str], authenticated: bool) -> str:
        access = []
        if authenticated and query.get("scope"):
            kind, name, actions = query["scope"].split(":")
            access = [{"type": kind, "name": name, "actions": actions.split(",")}]
        now = int(time.time())
        signer = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        header = {"typ": "JWT", "alg": "RS256", "x5c": [signer]}
        claims = {
            "iss": ISSUER,
            "sub": USER if authenticated else "",
            "aud": query.get("service", ""),
            "exp": now + 300,
            "nbf": now - 30,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Registry, TokenService]]:
    """A registry that wants Bearer tokens from a token service (the distribution token flow)."""
    tmp = tmp_path_factory.mktemp("token-registry")
    tokens = TokenService(tmp)
    running = start_registry(
        tmp,
        f"auth:\n  token:\n    realm: {tokens.realm}\n    service: {SERVICE}\n"
        f"    issuer: {ISSUER}\n    rootcertbundle: {tokens.bundle}\n",
    )
    yield running, tokens
    running.stop()
    tokens.stop()


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path]]:
    """A registry over HTTPS with a certificate from a CA of the test's own; (registry, CA file)."""
    tmp = tmp_path_factory.mktemp("tls-registry")
    ca_key = new_key()
    ca = certificate("wagi test CA", ca_key, ca=True)
    server_key = new_key()
    server = certificate("127.0.0.1", server_key, (ca, ca_key), ip="127.0.0.1")
    (tmp / "ca.pem").write_bytes(pem(ca))
    (tmp / "server.pem").write_bytes(pem(server))
    (tmp / "server.key").write_bytes(key_pem(server_key))
    running = start_registry(
        tmp, f"  tls:\n    certificate: {tmp}/server.pem\n    key: {tmp}/server.key\n"
    )
    yield running, tmp / "ca.pem"
    running.stop()


# -- references, credentials, transport: no network -------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("oci://127.0.0.1:5000/team/hello:1.0", OciModule("127.0.0.1:5000", "team/hello", "1.0")),
        ("oci:registry.example/hello:v2", OciModule("registry.example", "hello", "v2")),
        (
            f"oci://reg:5000/a/b-c/d__e.f@{ZERO_DIGEST}",
            OciModule("reg:5000", "a/b-c/d__e.f", None, ZERO_DIGEST),
        ),
        (
            f"oci://[::1]:5000/x:latest@{ZERO_DIGEST}",
            OciModule("[::1]:5000", "x", "latest", ZERO_DIGEST),
        ),
    ],
)
def test_references_parse_without_the_network(raw: str, expected: OciModule) -> None:
    assert parse_oci_reference(raw) == expected
    assert str(expected) == "oci://" + raw.removeprefix("oci://").removeprefix("oci:")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "oci://reg/team/hello",
            "'oci://reg/team/hello' needs a tag (:1.0) or a digest (@sha256:...)",
        ),
        (
            "oci://reg/Team/hello:1",
            "'Team/hello' is not a valid repository name (lowercase letters and digits, "
            "separated by '.', '_', '__' or '-', in '/'-separated parts) in "
            "'oci://reg/Team/hello:1'",
        ),
        (
            "oci://reg/x@sha512:abc",
            "'sha512:abc' is not a sha256 digest (sha256: and 64 lowercase hex digits) in "
            "'oci://reg/x@sha512:abc'",
        ),
        (
            "oci://hello:1.0",
            "expected oci://HOST[:PORT]/REPOSITORY:TAG or oci://HOST[:PORT]/REPOSITORY@sha256:"
            "DIGEST (the registry host comes first), got 'oci://hello:1.0'",
        ),
        (
            "oci://reg/x:-1",
            "'-1' is not a valid tag (letters, digits, '_', '.', '-'; at most 128 characters) "
            "in 'oci://reg/x:-1'",
        ),
    ],
)
def test_bad_references_stop_start_up_naming_file_route_and_key(
    tmp_path: Path, raw: str, message: str
) -> None:
    config = write_config(tmp_path, f'[[module]]\nroute = "/m"\nmodule = "{raw}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == f"{config}: [[module]] #1 (route '/m'), key 'module': {message}"


def test_local_modules_stay_local(tmp_path: Path) -> None:
    path, _ = write_module(tmp_path, "local")
    config = load_config(write_config(tmp_path, '[[module]]\nroute = "/m"\nmodule = "hello.wat"\n'))
    assert config.modules[0].module == LocalModule(path)
    # Nothing to pull: the configuration comes back as it was.
    assert pull_modules(config, load_settings(None, {})) == (config, {})


def test_plain_http_is_for_loopback_and_listed_registries_only() -> None:
    assert uses_plain_http("127.0.0.1:5000", "loopback")
    assert uses_plain_http("127.8.9.10", "loopback")
    assert uses_plain_http("localhost:5000", "loopback")
    assert uses_plain_http("[::1]:5000", "loopback")
    assert not uses_plain_http("registry.example:5000", "loopback")
    assert not uses_plain_http("10.0.0.1:5000", "loopback")
    assert uses_plain_http("registry.lan:5000", "loopback,registry.lan:5000")
    assert not uses_plain_http("registry.lan:5001", "registry.lan:5000")
    assert not uses_plain_http("127.0.0.1:5000", "")
    assert load_settings(None, {"WAGI_OCI_PLAIN_HTTP": "none"}).oci_plain_http == ""
    assert load_settings(None, {}).oci_plain_http == "loopback"
    with pytest.raises(SettingsError) as info:
        load_settings(None, {"WAGI_OCI_PLAIN_HTTP": "http://registry.lan"})
    assert str(info.value) == (
        "WAGI_OCI_PLAIN_HTTP: expected registries as HOST[:PORT] separated by commas, or "
        "'loopback', got 'http://registry.lan'"
    )


def test_credentials_come_from_the_environment_or_the_docker_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"alice:pa:ss").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "127.0.0.1:5000": {"auth": auth},
                    "https://registry.example/v1/": {"username": "bob", "password": "pw"},
                    "tokens.example": {"registrytoken": "t0k"},
                },
                "credsStore": "desktop",
            }
        )
    )
    docker = {"DOCKER_CONFIG": str(tmp_path)}
    found = find_credentials("127.0.0.1:5000", docker)
    assert found is not None and (found.username, found.password) == ("alice", "pa:ss")
    assert found.source == str(config)
    found = find_credentials("registry.example", docker)
    assert found is not None and (found.username, found.password) == ("bob", "pw")
    found = find_credentials("tokens.example", docker)
    assert found is not None and found.token == "t0k"
    assert find_credentials("127.0.0.1:5001", docker) is None
    env = {**docker, "WAGI_OCI_USERNAME": "carol", "WAGI_OCI_PASSWORD": "x"}
    found = find_credentials("127.0.0.1:5000", env)
    assert found is not None and found.username == "carol"
    assert found.source == "WAGI_OCI_USERNAME/WAGI_OCI_PASSWORD"
    with pytest.raises(AuthError) as info:
        find_credentials("127.0.0.1:5000", {"WAGI_OCI_USERNAME": "carol"})
    assert str(info.value) == "WAGI_OCI_USERNAME is set but WAGI_OCI_PASSWORD is not"
    config.write_text("{not json")
    with pytest.raises(AuthError) as info:
        find_credentials("127.0.0.1:5000", docker)
    assert str(info.value).startswith(f"cannot read the Docker config file {config}: ")


def test_workers_never_resolve_a_tag_themselves(tmp_path: Path) -> None:
    config = load_config(
        write_config(tmp_path, '[[module]]\nroute = "/m"\nmodule = "oci://reg:5000/x:1"\n')
    )
    with pytest.raises(SourceError) as info:
        resolve_modules(config, tmp_path / "cache", {})
    assert str(info.value) == (
        f"{tmp_path}/modules.toml: [[module]] #1 (route '/m'), key 'module': oci://reg:5000/x:1: "
        "no digest was resolved for this tag; the tag is resolved by wagi check, which wagi's "
        "gunicorn hooks (gunicorn.conf.py) run at start-up"
    )


def test_oci_modules_need_the_cache_directory(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/m"\nmodule = "oci://reg:5000/x:1"\n')
    result = wagi(tmp_path, "check", "--config", str(config), "--cache-dir", "")
    assert result.returncode == 2
    assert result.stderr == (
        f"wagi: error: {config}: [[module]] #1 (route '/m'), key 'module': OCI modules are kept "
        "in the cache directory, and --cache-dir is '' (disabled)\n"
    )


# -- push, pull, serve ----------------------------------------------------------


def test_push_publishes_a_wasm_to_oci_artifact_and_prints_its_digest(
    registry: Registry, tmp_path: Path
) -> None:
    module, wasm = write_module(tmp_path, "pushed")
    reference = registry.ref("team/pushed:1.0")
    result = wagi(tmp_path, "push", str(module), reference)
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert result.stdout == digest + "\n"
    assert result.stderr == (
        f"wagi: pushed {module} to {reference}\n"
        f"wagi: pin it in modules.toml as oci://{registry.host}/team/pushed@{digest}\n"
    )
    # What the registry holds is exactly wasm-to-oci's layout (WAGI 0.8 pulled this).
    base = f"http://{registry.host}/v2/team/pushed"
    answer = requests.get(f"{base}/manifests/1.0", headers={"Accept": MANIFEST_TYPE}, timeout=10)
    assert answer.status_code == 200
    assert sha256(answer.content) == digest
    assert answer.headers["Docker-Content-Digest"] == digest
    assert json.loads(answer.content) == {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": sha256(b"{}"), "size": 2},
        "layers": [
            {
                "mediaType": LAYER_TYPE,
                "digest": sha256(wasm),
                "size": len(wasm),
                "annotations": {"org.opencontainers.image.title": "hello.wasm"},
            }
        ],
    }
    assert requests.get(f"{base}/blobs/{sha256(wasm)}", timeout=10).content == wasm
    assert requests.get(f"{base}/blobs/{sha256(b'{}')}", timeout=10).content == b"{}"
    # Pushing the same module again gives the same digest.
    assert push(tmp_path, module, reference) == digest


def test_push_refuses_a_digest_and_a_missing_file(registry: Registry, tmp_path: Path) -> None:
    result = wagi(tmp_path, "push", "missing.wasm", registry.ref("team/x:1"))
    assert (result.returncode, result.stderr) == (
        2,
        "wagi: error: missing.wasm: cannot read module: No such file or directory\n",
    )
    module, _ = write_module(tmp_path, "x")
    result = wagi(tmp_path, "push", str(module), registry.ref(f"team/x@{ZERO_DIGEST}"))
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {registry.ref(f'team/x@{ZERO_DIGEST}')}: wagi push needs a tag and no "
        "digest, as in oci://HOST/REPO:TAG\n",
    )


def test_pull_by_tag_and_by_digest_and_serve_over_http(
    registry: Registry, tmp_path: Path, engine: str
) -> None:
    module, wasm = write_module(tmp_path, f"served on {engine}")
    digest = push(tmp_path, module, registry.ref(f"team/served-{engine}:1.0"))
    config = write_config(
        tmp_path,
        f"""
        [[module]]
        route = "/tag"
        module = "{registry.ref(f"team/served-{engine}:1.0")}"
        [[module]]
        route = "/pinned"
        module = "oci://{registry.host}/team/served-{engine}@{digest}"
        [[module]]
        route = "/wagi08/..."
        module = "oci:{registry.host}/team/served-{engine}:1.0"
        """,
    )
    server = serve(tmp_path, config, engine)
    try:
        for path in ("/tag", "/pinned", "/wagi08/x"):
            answer = server.get(path)
            assert (answer.status_code, answer.content) == (200, f"served on {engine}\n".encode())
            assert answer.headers["Content-Type"] == "text/plain"
        assert f"oci://{registry.host}/team/served-{engine}:1.0 is {digest}" in server.log()
    finally:
        server.stop()
    # The cache holds the verified blobs under their digests.
    blobs = tmp_path / "cache" / "oci" / "blobs" / "sha256"
    assert (blobs / sha256(wasm).removeprefix("sha256:")).read_bytes() == wasm
    assert sha256((blobs / digest.removeprefix("sha256:")).read_bytes()) == digest


def test_check_writes_the_pins_the_workers_get(registry: Registry, tmp_path: Path) -> None:
    module, _ = write_module(tmp_path, "pins")
    digest = push(tmp_path, module, registry.ref("team/pins:stable"))
    config = write_config(
        tmp_path, f'[[module]]\nroute = "/p"\nmodule = "{registry.ref("team/pins:stable")}"\n'
    )
    result = check(tmp_path, config, "--pins-file", str(tmp_path / "pins.json"))
    assert result.returncode == 0, result.stderr
    assert f"  {registry.ref('team/pins:stable')} is {digest}\n" in result.stdout
    assert json.loads((tmp_path / "pins.json").read_text()) == {
        f"{registry.host}/team/pins:stable": digest
    }
    run = wagi(
        tmp_path, "run", "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "/p"
    )
    # (text mode: the CRLFs of the status line and headers read as \n)
    assert run.stdout == "HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 5\n\npins\n"


def descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": sha256(blob), "size": len(blob)}


def upload(
    registry: Registry,
    reference: str,
    layers: list[tuple[str, bytes]],
    config: tuple[str, bytes] = (CONFIG_TYPE, b"{}"),
) -> bytes:
    """Store an artifact of other layers, the way another tool would; its manifest."""
    repository, _, tag = reference.partition(":")
    client = WagiRegistry(registry.host, plain_http=True)
    for _, blob in [config, *layers]:
        client.upload_blob(repository, sha256(blob), blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(*config),
        "layers": [descriptor(*layer) for layer in layers],
    }
    body = json.dumps(manifest).encode()
    client.put_manifest(repository, tag, body, MANIFEST_TYPE)
    return body


def test_the_cncf_layout_pulls_and_other_artifacts_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    _, wasm = write_module(tmp_path, "cncf layout")
    cncf_config = ("application/vnd.wasm.config.v0+json", b'{"architecture":"wasm"}')
    upload(registry, "layouts/cncf:1", [("application/wasm", wasm)], cncf_config)
    config = write_config(
        tmp_path, f'[[module]]\nroute = "/c"\nmodule = "{registry.ref("layouts/cncf:1")}"\n'
    )
    cache = str(tmp_path / "cache")
    run = wagi(tmp_path, "run", "--config", str(config), "--cache-dir", cache, "/c")
    assert (
        run.stdout
        == "HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 12\n\ncncf layout\n"
    )

    image_layer = ("application/vnd.oci.image.layer.v1.tar+gzip", b"\x1f\x8b not a tarball")
    image_config = ("application/vnd.oci.image.config.v1+json", b"{}")
    upload(registry, "layouts/image:1", [image_layer], image_config)
    manifest = upload(registry, "layouts/index:one", [(LAYER_TYPE, wasm)])
    index_type = "application/vnd.oci.image.index.v1+json"
    index = {
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [
            {
                **descriptor(MANIFEST_TYPE, manifest),
                "platform": {"os": "wasip1", "architecture": "wasm"},
            }
        ],
    }
    WagiRegistry(registry.host, plain_http=True).put_manifest(
        "layouts/index", "all", json.dumps(index).encode(), index_type
    )
    for name, said in {
        "layouts/image:1": "the artifact has no WebAssembly layers "
        "(application/vnd.wasm.content.layer.v1+wasm or application/wasm); its layers: "
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "layouts/index:all": f"it is an image index ({index_type}), not a single module: name "
        "one of its manifests by digest",
    }.items():
        config = write_config(
            tmp_path, f'[[module]]\nroute = "/x"\nmodule = "{registry.ref(name)}"\n'
        )
        result = check(tmp_path, config)
        assert (result.returncode, result.stderr) == (
            2,
            f"wagi: error: {config}: [[module]] #1 (route '/x'), key 'module': "
            f"{registry.ref(name)}: {said}\n",
        )


def test_unknown_repository_tag_and_digest_stop_start_up(
    registry: Registry, tmp_path: Path
) -> None:
    module, _ = write_module(tmp_path, "known")
    push(tmp_path, module, registry.ref("errors/known:1.0"))
    push(tmp_path, module, registry.ref("errors/known:1.1"))
    cases = {
        "errors/known:9.9": "the repository 'errors/known' has no tag '9.9' "
        "(404 MANIFEST_UNKNOWN: manifest unknown); its tags: 1.0, 1.1",
        "errors/nothing:1.0": "the registry has no repository 'errors/nothing' "
        "(404 NAME_UNKNOWN: repository name not known to registry)",
        f"errors/known@{ZERO_DIGEST}": f"the repository 'errors/known' has no manifest "
        f"{ZERO_DIGEST} (404 MANIFEST_UNKNOWN: manifest unknown)",
    }
    for name, said in cases.items():
        config = write_config(
            tmp_path, f'[[module]]\nroute = "/m"\nmodule = "{registry.ref(name)}"\n'
        )
        result = check(tmp_path, config)
        assert (result.returncode, result.stderr) == (
            2,
            f"wagi: error: {config}: [[module]] #1 (route '/m'), key 'module': "
            f"{registry.ref(name)}: {said}\n",
        )
    # gunicorn refuses to start on it, with the same words in its log.
    env = clean_env(tmp_path)
    refused = start_gunicorn(tmp_path, config, "auto", workers=1, wait=False, extra_env=env)
    assert refused.process.wait(timeout=60) != 0
    assert (
        f"wagi cannot start: \nwagi: error: {config}: [[module]] #1 (route '/m'), key 'module': "
        f"{registry.ref(f'errors/known@{ZERO_DIGEST}')}: the repository 'errors/known' has no "
        f"manifest {ZERO_DIGEST} (404 MANIFEST_UNKNOWN: manifest unknown)\n" in refused.log()
    )
    assert "Booting worker" not in refused.log()


def test_a_damaged_module_layer_is_refused(registry: Registry, tmp_path: Path) -> None:
    module, wasm = write_module(tmp_path, "damaged layer")
    reference = registry.ref("damage/layer:1.0")
    push(tmp_path, module, reference)
    stored = registry.stored_blob(sha256(wasm))
    damaged = bytearray(stored.read_bytes())
    damaged[-2] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    config = write_config(tmp_path, f'[[module]]\nroute = "/m"\nmodule = "{reference}"\n')
    result = check(tmp_path, config)
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {config}: [[module]] #1 (route '/m'), key 'module': {reference}: the "
        f"registry sent a module layer whose digest is {sha256(bytes(damaged))}, not "
        f"{sha256(wasm)} as its manifest says; refused\n",
    )
    blobs = tmp_path / "cache" / "oci" / "blobs" / "sha256"
    assert not blobs.exists() or os.listdir(blobs) == []


def test_a_manifest_that_is_not_the_pinned_one_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    module, _ = write_module(tmp_path, "damaged manifest")
    digest = push(tmp_path, module, registry.ref("damage/manifest:1.0"))
    stored = registry.stored_blob(digest)
    original = stored.read_bytes()
    changed = original.replace(b'"hello.wasm"', b'"HELLO.wasm"')
    assert changed != original
    stored.write_bytes(changed)
    reference = f"oci://{registry.host}/damage/manifest@{digest}"
    config = write_config(tmp_path, f'[[module]]\nroute = "/m"\nmodule = "{reference}"\n')
    result = check(tmp_path, config)
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {config}: [[module]] #1 (route '/m'), key 'module': {reference}: the "
        f"registry sent a manifest whose digest is {sha256(changed)}, not the pinned {digest}; "
        "refused\n",
    )


def test_a_damaged_cache_entry_is_pulled_again(registry: Registry, tmp_path: Path) -> None:
    module, wasm = write_module(tmp_path, "cache repair")
    digest = push(tmp_path, module, registry.ref("damage/cache:1.0"))
    reference = f"oci://{registry.host}/damage/cache@{digest}"
    config = write_config(tmp_path, f'[[module]]\nroute = "/m"\nmodule = "{reference}"\n')
    assert check(tmp_path, config).returncode == 0
    cached = tmp_path / "cache" / "oci" / "blobs" / "sha256" / sha256(wasm).removeprefix("sha256:")
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")
    result = check(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert cached.read_bytes() == wasm


def test_registry_down_a_digest_pin_starts_from_the_cache_a_tag_does_not(
    tmp_path: Path, engine: str
) -> None:
    down = start_registry(tmp_path / "registry")
    try:
        module, _ = write_module(tmp_path, "from the cache")
        digest = push(tmp_path, module, down.ref("team/offline:1.0"))
        pinned = write_config(
            tmp_path / "pinned",
            f'[[module]]\nroute = "/m"\nmodule = "oci://{down.host}/team/offline@{digest}"\n',
        )
        assert check(tmp_path, pinned).returncode == 0  # warms tmp_path/cache
    finally:
        down.stop()
    server = serve(tmp_path, pinned, engine, WAGI_CACHE_DIR=str(tmp_path / "cache"))
    try:
        assert server.get("/m").content == b"from the cache\n"
    finally:
        server.stop()
    tagged = write_config(
        tmp_path / "tagged",
        f'[[module]]\nroute = "/m"\nmodule = "{down.ref("team/offline:1.0")}"\n',
    )
    result = check(tmp_path, tagged)
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {tagged}: [[module]] #1 (route '/m'), key 'module': "
        f"{down.ref('team/offline:1.0')}: cannot reach the registry at http://{down.host} "
        "(connection refused); a tag is resolved at every start-up, so the registry must "
        "answer (pin a digest, @sha256:..., to start from the cache without it)\n",
    )


def test_a_moved_tag_is_served_after_a_reload_and_not_before(
    registry: Registry, tmp_path: Path, engine: str
) -> None:
    v1, _ = write_module(tmp_path / "v1", f"version 1 on {engine}")
    v2, _ = write_module(tmp_path / "v2", f"version 2 on {engine}")
    reference = registry.ref(f"moving/{engine}:live")
    push(tmp_path, v1, reference)
    config = write_config(tmp_path, f'[[module]]\nroute = "/live"\nmodule = "{reference}"\n')
    server = start_gunicorn(
        tmp_path,
        config,
        engine,
        workers=2,
        extra_env=clean_env(tmp_path),
        gunicorn_args=("--graceful-timeout", "2"),
    )
    try:
        assert server.get("/live").text == f"version 1 on {engine}\n"
        second = push(tmp_path, v2, reference)
        # The tag moved, but nothing pulls it mid-flight: not even a worker that
        # gunicorn starts again in between.
        before = worker_pids(server)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(worker_pids(server) - {victim}) < 2:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        for _ in range(8):
            assert server.get("/live").text == f"version 1 on {engine}\n"
        # A reload (SIGHUP) pulls the tag again and the new workers serve version 2.
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while server.get("/live").text != f"version 2 on {engine}\n":
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        while worker_pids(server) & before:  # the old workers are gone
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        for _ in range(8):
            assert server.get("/live").text == f"version 2 on {engine}\n"
        assert f"{reference} is {second}" in server.log()
    finally:
        server.stop()


# -- authentication and TLS ---------------------------------------------------------


def test_basic_auth_required_refused_and_given(basic_registry: Registry, tmp_path: Path) -> None:
    module, _ = write_module(tmp_path, "private")
    reference = basic_registry.ref("private/hello:1.0")
    result = wagi(tmp_path, "push", str(module), reference)
    assert (result.returncode, result.stderr) == (
        2,
        # (push starts with a HEAD, whose answer has no body to explain it)
        f"wagi: error: {reference}: the registry requires authentication (401 Unauthorized) "
        f"and wagi has no credentials for {basic_registry.host}: set "
        "WAGI_OCI_USERNAME and WAGI_OCI_PASSWORD (or WAGI_OCI_TOKEN), or log in with docker "
        f"login ({tmp_path}/docker/config.json)\n",
    )
    result = wagi(
        tmp_path, "push", str(module), reference, WAGI_OCI_USERNAME=USER, WAGI_OCI_PASSWORD="no"
    )
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {reference}: the registry refused the credentials from "
        "WAGI_OCI_USERNAME/WAGI_OCI_PASSWORD (401 Unauthorized)\n",
    )
    digest = push(tmp_path, module, reference, WAGI_OCI_USERNAME=USER, WAGI_OCI_PASSWORD=PASSWORD)
    config = write_config(tmp_path, f'[[module]]\nroute = "/p"\nmodule = "{reference}"\n')
    result = check(tmp_path, config)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"wagi: error: {config}: [[module]] #1 (route '/p'), key 'module': {reference}: the "
        "registry requires authentication (401 UNAUTHORIZED: authentication required)"
    )
    result = check(tmp_path, config, WAGI_OCI_USERNAME=USER, WAGI_OCI_PASSWORD="no")
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {config}: [[module]] #1 (route '/p'), key 'module': {reference}: the "
        "registry refused the credentials from WAGI_OCI_USERNAME/WAGI_OCI_PASSWORD (401 "
        "UNAUTHORIZED: authentication required)\n",
    )
    # docker login's file: the server pulls with it at start-up and serves.
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (tmp_path / "docker").mkdir(exist_ok=True)
    (tmp_path / "docker" / "config.json").write_text(
        json.dumps({"auths": {basic_registry.host: {"auth": auth}}})
    )
    server = serve(tmp_path, config)
    try:
        assert server.get("/p").text == "private\n"
        assert f"{reference} is {digest}" in server.log()
    finally:
        server.stop()


def test_bearer_token_flow(token_registry: tuple[Registry, TokenService], tmp_path: Path) -> None:
    registry, tokens = token_registry
    module, _ = write_module(tmp_path, "behind tokens")
    reference = registry.ref("tokens/hello:1.0")
    credentials = {"WAGI_OCI_USERNAME": USER, "WAGI_OCI_PASSWORD": PASSWORD}
    digest = push(tmp_path, module, reference, **credentials)
    # The token service was asked for the scopes the registry named in its challenges.
    # (the registry names the actions in either order)
    asked = {
        (
            r.get("service"),
            r.get("scope", "").rpartition(":")[0],
            frozenset(r.get("scope", "").rpartition(":")[2].split(",")),
        )
        for r in tokens.requests
    }
    assert (SERVICE, "repository:tokens/hello", frozenset({"pull", "push"})) in asked
    wrong = {"WAGI_OCI_USERNAME": USER, "WAGI_OCI_PASSWORD": "wrong"}
    result = wagi(tmp_path, "push", str(module), reference, **wrong)
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {reference}: the token service at {tokens.realm} refused the credentials "
        "from WAGI_OCI_USERNAME/WAGI_OCI_PASSWORD (401 Unauthorized)\n",
    )
    config = write_config(tmp_path, f'[[module]]\nroute = "/t"\nmodule = "{reference}"\n')
    anonymous = check(tmp_path, config)
    assert anonymous.returncode == 2
    assert anonymous.stderr.startswith(
        f"wagi: error: {config}: [[module]] #1 (route '/t'), key 'module': {reference}: the "
        "registry requires authentication (401 UNAUTHORIZED: authentication required) and wagi "
        f"has no credentials for {registry.host}"
    )
    server = serve(tmp_path, config, **credentials)
    try:
        assert server.get("/t").text == "behind tokens\n"
        assert f"{reference} is {digest}" in server.log()
    finally:
        server.stop()
    # A token obtained elsewhere (WAGI_OCI_TOKEN) is sent as it is.
    token = tokens.token({"service": SERVICE, "scope": "repository:tokens/hello:pull"}, True)
    result = check(tmp_path, config, WAGI_OCI_TOKEN=token)
    assert result.returncode == 0, result.stderr
    result = check(tmp_path, config, WAGI_OCI_TOKEN=token[:-8] + "AAAAAAAA")
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {config}: [[module]] #1 (route '/t'), key 'module': {reference}: the "
        "registry refused the credentials from WAGI_OCI_TOKEN (401 UNAUTHORIZED: "
        "authentication required)\n",
    )


def test_tls_with_a_custom_ca(tls_registry: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, ca_file = tls_registry
    module, _ = write_module(tmp_path, "over tls")
    reference = registry.ref("tls/hello:1.0")
    https = {"WAGI_OCI_PLAIN_HTTP": "none"}
    result = wagi(tmp_path, "push", str(module), reference, **https)
    assert (result.returncode, result.stderr) == (
        2,
        f"wagi: error: {reference}: cannot reach the registry at https://{registry.host} (TLS "
        "certificate not trusted: unable to get local issuer certificate)\n",
    )
    digest = push(tmp_path, module, reference, WAGI_OCI_CA_FILE=str(ca_file), **https)
    flags = ("--oci-ca-file", str(ca_file), "--oci-plain-http", "none")
    result = wagi(tmp_path, "push", *flags, str(module), reference)
    assert (result.returncode, result.stdout) == (0, digest + "\n")
    config = write_config(tmp_path, f'[[module]]\nroute = "/s"\nmodule = "{reference}"\n')
    server = serve(tmp_path, config, WAGI_OCI_CA_FILE=str(ca_file), **https)
    try:
        assert server.get("/s").text == "over tls\n"
    finally:
        server.stop()
