"""deploy/kubernetes/ and the Containerfile, as far as a machine without a cluster or a
container engine can take them.

- The manifests validate offline against the Kubernetes API schemas (``kubernetes-validate``,
  strict: an unknown field is an error), and agree with each other and with the image.
- The Containerfile's build stage runs here: its COPY steps copy the same files and its RUN
  steps run as written, with the image's paths moved under a temporary directory and the
  image's CPython being this one. The wagi installed that way checks the samples, then runs
  exactly as the Deployment starts it (entrypoint, arguments, environment), answers the
  Deployment's probes, stays inside the memory the Deployment grants, and stops cleanly on
  SIGTERM.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml

from ..support.servers import ROOT, SAMPLES, free_port

try:
    import tomllib
except ModuleNotFoundError:  # CPython 3.10
    import tomli as tomllib  # type: ignore[no-redef]

KUBE = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "Containerfile"
MIB = 1024 * 1024
# The oldest Kubernetes the manifests are written for, and the newest the package knows.
K8S_VERSIONS = ["1.25", kubernetes_validate.latest_version()]
# `module = "oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]"` (or WAGI 0.8's `oci:`), as
# wagi's OCI support reads it: the registry written out, a tag or a digest required.
OCI_REFERENCE = re.compile(
    r"^oci:(//)?[A-Za-z0-9.-]+(:\d+)?/[a-z0-9]+([._/-][a-z0-9]+)*"
    r"(?=[:@])(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
)


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def manifest(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents() if doc["kind"] == kind]
    return found


def container() -> dict[str, Any]:
    (only,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(only)


def container_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container()["env"]}


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (``128Mi``, ``1Gi``) in MiB."""
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    kinds = []
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    # Strict means strict: a misspelt field does not pass.
    misspelt = copy.deepcopy(manifest("Deployment"))
    probe = misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(misspelt, version, strict=True)


def test_the_manifests_agree_with_each_other() -> None:
    deployment, service = manifest("Deployment"), manifest("Service")
    pdb, hpa, configmap = (
        manifest("PodDisruptionBudget"),
        manifest("HorizontalPodAutoscaler"),
        manifest("ConfigMap"),
    )
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The Service, the budget and the autoscaler all reach these pods.
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # A drain never takes every pod the autoscaler keeps.
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    # The Service and the probes use the port wagi listens on.
    wagi = container()
    (port,) = wagi["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    args = wagi["args"]
    assert args[args.index("--bind") + 1] == f"0.0.0.0:{port['containerPort']}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert wagi[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # The ConfigMap's modules.toml is where WAGI_CONFIG says.
    env = container_env()
    mounts = {m["name"]: m["mountPath"] for m in wagi["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (config_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert volumes[config_volume]["configMap"]["name"] == configmap["metadata"]["name"]
    (item,) = volumes[config_volume]["configMap"]["items"]
    assert item["key"] in configmap["data"]
    assert f"{mounts[config_volume]}/{item['path']}" == env["WAGI_CONFIG"]
    # The cache is a volume of the pod's own (the root filesystem is read-only).
    caches = [n for n, v in volumes.items() if "emptyDir" in v]
    assert [n for n in caches if mounts[n] == env["WAGI_CACHE_DIR"]] != []
    assert wagi["securityContext"]["readOnlyRootFilesystem"] is True
    # Docker's config file from the registry Secret, as DOCKER_CONFIG/config.json.
    (secret,) = [n for n, v in volumes.items() if "secret" in v]
    assert volumes[secret]["secret"]["items"] == [
        {"key": ".dockerconfigjson", "path": "config.json"}
    ]
    assert mounts[secret] == env["DOCKER_CONFIG"]
    # The pod runs as the image's user.
    _, final = parse_containerfile(CONTAINERFILE.read_text())
    (user,) = [arguments for keyword, arguments in final if keyword == "USER"]
    security = pod["spec"]["securityContext"]
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"


def test_the_deployment_s_timings_let_modules_finish() -> None:
    wagi, env = container(), container_env()
    module_timeout = float(env["WAGI_TIMEOUT"])
    args = wagi["args"]
    graceful = float(args[args.index("--graceful-timeout") + 1])
    # A request in flight when the pod is told to stop may run to its module timeout ...
    assert graceful > module_timeout
    pre_stop = float(wagi["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = manifest("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + graceful
    # ... and every worker may be inside a module that long while the liveness probe waits.
    live = wagi["livenessProbe"]
    assert (
        live["periodSeconds"] * live["failureThreshold"] > module_timeout + live["timeoutSeconds"]
    )
    # One sync worker per requested core.
    assert float(wagi["resources"]["requests"]["cpu"]) == int(env["WEB_CONCURRENCY"])


def test_the_configmap_s_modules_come_from_an_oci_registry() -> None:
    config = tomllib.loads(manifest("ConfigMap")["data"]["modules.toml"])
    routes = [entry["route"] for entry in config["module"]]
    assert len(routes) == len(set(routes)) > 0
    for entry in config["module"]:
        assert OCI_REFERENCE.match(entry["module"]), entry["module"]
    # The pattern refuses what wagi refuses: no registry, neither tag nor digest, a short digest.
    for bad in (
        "oci://team/hello",
        "oci://registry.example.com/team/hello",
        "oci://registry.example.com/team/hello@sha256:abc",
        "registry.example.com/team/hello:1.0",
    ):
        assert not OCI_REFERENCE.match(bad), bad


# ---- the Containerfile ---------------------------------------------------------------------


def parse_containerfile(text: str) -> list[list[tuple[str, str]]]:
    """Stages of ``(INSTRUCTION, arguments)``, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1].rstrip() + " "
            continue
        keyword, _, arguments = (logical + stripped).partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


@dataclass
class Image:
    """The build stage's result, here: the image's paths under ``root``."""

    root: Path
    env: dict[str, str]  # the final stage's ENV, paths moved under root
    entrypoint: list[str]
    cmd: list[str]

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")


def under(root: Path, prefixes: list[str], text: str) -> str:
    """``text`` with every image path that starts with one of ``prefixes`` moved under root."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = re.sub(rf"(?<![\w./]){re.escape(prefix)}(?=[/\s:]|$)", f"{root}{prefix}", text)
    return text


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    build, final = parse_containerfile(CONTAINERFILE.read_text())
    base = build[0][1].split()[0]
    assert final[0][1] == base, "both stages start from the same image (the venv moves as is)"
    version = re.search(r"python:(\d+\.\d+)", base).group(1)  # type: ignore[union-attr]
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != version:
        pytest.skip(f"the image runs CPython {version}; this is CPython {sys.version.split()[0]}")
    tmp = tmp_path_factory.mktemp("image")
    root = tmp / "root"
    # The image's `python`: this CPython itself (not its virtualenv).
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys._base_executable)  # type: ignore[attr-defined]
    copied_out = [args.split()[1] for kw, args in final if kw == "COPY" and "--from=" in args]
    written = [args.split()[-1].rstrip("/") for kw, args in build if kw == "COPY"]
    prefixes = copied_out + written
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    for keyword, arguments in build[1:]:
        if keyword == "COPY":
            *sources, dest = arguments.split()
            target = root / dest.lstrip("/")
            for source in sources:
                if (ROOT / source).is_dir():  # a directory's contents, as COPY does
                    shutil.copytree(ROOT / source, target)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target / Path(source).name)
        elif keyword == "RUN":
            command = under(root, prefixes, arguments)
            subprocess.run(["/bin/sh", "-c", command], env=env, check=True, cwd=tmp)
        else:
            raise AssertionError(f"the build stage has a {keyword}: teach this test what it does")
    for source in copied_out:  # COPY --from=build X X: the venv stays where it was built
        (copy_line,) = [a for k, a in final if k == "COPY" and a.split()[1] == source]
        assert copy_line.split()[2] == source
    image_env: dict[str, str] = {}
    for keyword, arguments in final:
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                image_env[name] = value.replace("$PATH", os.environ["PATH"])
    cache = [image_env["WAGI_CACHE_DIR"]]
    moved = {k: under(root, prefixes + cache, v) for k, v in image_env.items()}
    (entrypoint,) = [json.loads(a) for k, a in final if k == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for k, a in final if k == "CMD"]
    return Image(root, moved, entrypoint, cmd)


def image_environment(image: Image, **overrides: str) -> dict[str, str]:
    """A process environment like the container's: the image's ENV, nothing from the tests."""
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
    return keep | image.env | overrides


def test_the_containerfile_installs_wagi_that_checks_the_samples(
    image: Image, tmp_path: Path
) -> None:
    python = image.path("/opt/wagi/bin/python")
    where = subprocess.run(
        [python, "-c", "import wagi; print(wagi.__file__)"],
        env=image_environment(image),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    # The installed copy, not this checkout.
    assert Path(where.stdout.strip()).is_relative_to(image.path("/opt/wagi/lib"))
    env = image_environment(image, WAGI_CACHE_DIR=str(tmp_path / "cache"))
    wagi = shutil.which(image.entrypoint[0], path=env["PATH"])
    assert wagi == str(image.path("/opt/wagi/bin/wagi"))
    check = subprocess.run(
        [wagi, "check", "--config", str(SAMPLES / "modules.toml")],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    # The same verdict and routing table as this checkout's own wagi gives.
    here = subprocess.run(
        [sys.executable, "-m", "wagi", "check", "--config", str(SAMPLES / "modules.toml")],
        env=os.environ | {"WAGI_CACHE_DIR": str(tmp_path / "cache-here")},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert (check.stdout, here.returncode) == (here.stdout, 0)
    assert " engine wasmtime " in check.stdout.splitlines()[0]
    assert "/hello" in check.stdout


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


def peak_rss_mib(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Run ``command`` to its end; its peak resident memory."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0
    return usage.ru_maxrss / 1024


def test_the_deployment_s_pod_serves_its_probes_within_its_memory(
    image: Image, tmp_path: Path
) -> None:
    wagi = container()
    deployment_env = container_env()
    port = free_port()
    (bind,) = [i for i, arg in enumerate(wagi["args"]) if arg == "0.0.0.0:3000"]
    args = list(wagi["args"])
    args[bind] = f"127.0.0.1:{port}"  # loopback only, here
    cache = tmp_path / "cache"
    # The ConfigMap names modules in a registry; the samples stand in for them here.
    env = image_environment(
        image,
        **deployment_env
        | {
            "WAGI_CONFIG": str(SAMPLES / "modules.toml"),
            "WAGI_CACHE_DIR": str(cache),
            "DOCKER_CONFIG": str(tmp_path / "registry-auth"),
        },
    )
    command = [str(image.path("/opt/wagi/bin/wagi")), *image.entrypoint[1:], *args]
    assert "command" not in wagi  # the image's entrypoint runs, with the Deployment's args
    # which replace the image's CMD: they must say again where to listen.
    assert wagi["args"][: len(image.cmd)] == image.cmd
    # The start-up check, on its own with a cold cache: its peak memory.
    check_peak = peak_rss_mib(
        [str(image.path("/opt/wagi/bin/wagi")), "check", "--quiet"], env, tmp_path
    )
    shutil.rmtree(cache)
    log = tmp_path / "pod.log"
    with open(log, "wb") as out:
        pod = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        startup = wagi["startupProbe"]
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        while True:
            assert pod.poll() is None, log.read_text()
            try:
                if requests.get(url + startup["httpGet"]["path"], timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        for name in ("readinessProbe", "livenessProbe"):
            probe = wagi[name]
            answer = requests.get(url + probe["httpGet"]["path"], timeout=probe["timeoutSeconds"])
            assert (answer.status_code, answer.text) == (200, "OK")

        # Memory: serve every sample a few hundred times, then weigh the pod's processes.
        session = requests.Session()
        paths = ["/hello", "/env/x?a=1", "/routes/hello", "/stats?n=1&n=2", "/request/a?b=c"]
        paths += ["/guestbook", "/guestbook/static/guestbook.css"]
        for _ in range(200):
            for path in paths:
                assert session.get(url + path, timeout=30).status_code == 200
            assert session.post(url + "/echo", data=b"x" * 16384, timeout=30).status_code == 200
        workers = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _parent(int(p.name)) == pod.pid
        ]
        assert len(workers) == int(deployment_env["WEB_CONCURRENCY"])
        master = pss_mib(pod.pid)
        per_worker = max(pss_mib(pid) for pid in workers)
        steady = master + sum(pss_mib(pid) for pid in workers)
        module_memory = float(deployment_env["WAGI_MAX_MEMORY"].split()[0])
        assert deployment_env["WAGI_MAX_MEMORY"].endswith(" MiB")
        worst = master + len(workers) * (per_worker + module_memory) + check_peak
        resources = wagi["resources"]
        print(
            f"\npod memory: master {master:.0f} MiB PSS, workers {per_worker:.0f} MiB PSS each, "
            f"check {check_peak:.0f} MiB peak; steady {steady:.0f} MiB "
            f"(request {resources['requests']['memory']}), worst {worst:.0f} MiB "
            f"(limit {resources['limits']['memory']})"
        )
        assert steady < mebibytes(resources["requests"]["memory"])
        assert worst < mebibytes(resources["limits"]["memory"])
    finally:
        # What Kubernetes does when the pod goes: SIGTERM, then SIGKILL after the grace period.
        pod.send_signal(signal.SIGTERM)
        grace = manifest("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        try:
            code = pod.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pod.kill()
            pod.wait()
            raise
    assert code == 0, log.read_text()[-3000:]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1
