"""Cold start of a large module: seconds from starting a server to its first answer.

Starts a fresh ``gunicorn wagi.wsgi:app`` (one worker) and times until the first
request gets 200, first with an empty artifact cache (cold: the module is compiled),
then again with the cache that run filled (warm: it is only loaded). Meant for the
real-application sample (fetch it first with ``samples/fetch-real-app.sh``)::

    python bench/cold_start.py                       # samples/yosys.toml, POST /synth
    python bench/cold_start.py --engine wasmer --load-only

``--load-only`` times the engine alone (``engine.load``, cold and warm), for an
engine that refuses the configuration's settings (wasmer has no volumes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
COUNTER = b"""\
module counter(input clk, input rst, output reg [7:0] q);
  always @(posedge clk) q <= rst ? 8'd0 : q + 8'd1;
endmodule
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_answer(config: Path, engine: str, cache: Path, path: str, body: bytes) -> float:
    """Seconds from starting gunicorn to the first 200 answer to ``POST path``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAGI_")}
    env.update(WAGI_CONFIG=str(config), WAGI_ENGINE=engine, WAGI_CACHE_DIR=str(cache))
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "wagi.wsgi:app",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
    ]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", "1"]
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            try:
                r = requests.post(f"http://127.0.0.1:{port}{path}", data=body, timeout=300)
            except requests.ConnectionError:
                time.sleep(0.05)
                continue
            elapsed = time.monotonic() - started
            if r.status_code != 200:
                raise SystemExit(f"first answer was {r.status_code}: {r.text}")
            return elapsed
    finally:
        process.terminate()
        process.wait(30)


def load_time(module: Path, engine: str, cache: Path) -> float:
    """Seconds ``engine.load`` takes in a fresh process (compiling, or from ``cache``)."""
    code = (
        "import sys, time; from pathlib import Path\n"
        "from wagi.engines import create_engine\n"
        "e = create_engine(sys.argv[1], Path(sys.argv[2]))\n"
        "t = time.monotonic(); e.load(Path(sys.argv[3])); print(time.monotonic() - t)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, engine, str(cache), str(module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise SystemExit(f"{engine} cannot load {module}: {lines[-1] if lines else '?'}")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "samples" / "yosys.toml")
    parser.add_argument("--engine", default="wasmtime")
    parser.add_argument("--path", default="/synth")
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--module", type=Path, default=ROOT / "samples" / "yosys" / "yosys.wasm")
    parser.add_argument("--load-only", action="store_true")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="wagi-cold-start-"))
    try:
        if args.load_only:
            cold = load_time(args.module, args.engine, cache)
            warm = [load_time(args.module, args.engine, cache) for _ in range(args.warm_runs)]
            what = f"{args.engine}: engine.load({args.module.name})"
        else:
            cold = first_answer(args.config, args.engine, cache, args.path, COUNTER)
            warm = [
                first_answer(args.config, args.engine, cache, args.path, COUNTER)
                for _ in range(args.warm_runs)
            ]
            what = f"{args.engine}: first answer of a fresh server ({args.config.name})"
        print(
            f"{what}: cold cache {cold:.1f} s; warm cache "
            + ", ".join(f"{w:.1f}" for w in warm)
            + " s"
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
