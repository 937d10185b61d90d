"""Request ids, JSON logs and Prometheus metrics, through real gunicorn on every engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from wagi.config import settings

from ..support.nginx import nginx_in_front
from ..support.servers import (
    PROBE,
    ROOT,
    Server,
    env_lines,
    free_port,
    start_gunicorn,
    wagi,
    write_config,
)

GENERATED_ID = re.compile(r"[0-9a-f]{32}")

CONFIG = """
[[module]]
route = "/probe/..."
module = "{probe}"

[[module]]
route = "/slow"
module = "{probe}"
timeout = 1

[[module]]
route = "/..."
module = "{probe}"
argv = "catch-all ${{ARGS}}"
"""


def records(server: Server) -> list[dict[str, Any]]:
    """Every line of the server's log as a JSON object: a line that is not one fails."""
    out = []
    for line in server.log().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "pid", "message"} <= record.keys(), line
        out.append(record)
    return out


def records_of(server: Server, request_id: str, count: int) -> list[dict[str, Any]]:
    """The log records of one request, once ``count`` of them are written (the access
    line comes after the response)."""
    deadline = time.monotonic() + 15
    while True:
        found = [r for r in records(server) if r.get("request_id") == request_id]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


class Metrics:
    """A server's ``/metrics``, scraped on its own port."""

    def __init__(self, url: str) -> None:
        self.url = url

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = requests.get(self.url, timeout=10).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, frozenset(labels.items())), 0.0)

    def wait_for(self, name: str, expected: float, **labels: str) -> float:
        """The value once it reaches ``expected`` (a request is counted when the server
        closes its body, just after the client has it), or what it is after 15 s."""
        deadline = time.monotonic() + 15
        while self.value(name, **labels) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # and nothing more comes
        return self.value(name, **labels)


@pytest.fixture(scope="module")
def observed(
    engine: str, server_factory: Callable[..., Server]
) -> Iterator[tuple[Server, Metrics]]:
    """JSON logs and metrics on; no trusted proxy."""
    port = free_port()
    server = server_factory(
        CONFIG,
        engine,
        workers=1,
        extra_env={"WAGI_LOG_FORMAT": "json", "WAGI_METRICS_BIND": f"127.0.0.1:{port}"},
        gunicorn_args=("--access-logfile", "-"),
    )
    yield server, Metrics(f"http://127.0.0.1:{port}/metrics")


@pytest.fixture(scope="module")
def behind_proxy(engine: str, server_factory: Callable[..., Server]) -> Server:
    """The defaults (text logs, no metrics; the access log on) behind one trusted proxy hop."""
    return server_factory(
        '[[module]]\nroute = "/probe/..."\nmodule = "{probe}"\n',
        engine,
        workers=1,
        extra_env={"WAGI_TRUSTED_PROXY_HOPS": "1"},
        gunicorn_args=("--access-logfile", "-"),
    )


# --- request ids ---------------------------------------------------------------------------


def test_request_id_is_generated_passed_to_the_module_and_echoed(
    observed: tuple[Server, Metrics],
) -> None:
    server, _ = observed
    r = server.get("/probe?hdr&env", headers={"X-Request-Id": "chosen-by-the-client"})
    request_id = r.headers["X-Request-Id"]
    assert GENERATED_ID.fullmatch(request_id)
    env = env_lines(r.text)
    assert env["X_REQUEST_ID"] == request_id
    # Without a trusted proxy the client's header is only a header.
    assert env["HTTP_X_REQUEST_ID"] == "chosen-by-the-client"
    again = server.get("/probe?hdr&env")
    assert again.headers["X-Request-Id"] != request_id
    assert env_lines(again.text)["X_REQUEST_ID"] == again.headers["X-Request-Id"]


def test_every_response_has_a_request_id(observed: tuple[Server, Metrics]) -> None:
    server, _ = observed
    for path in ("/healthz", "/probe/%00", "/probe?hdr&exit=3", "/probe?raw=no-header"):
        assert GENERATED_ID.fullmatch(server.get(path).headers["X-Request-Id"]), path


def test_a_trusted_proxy_sets_the_request_id(behind_proxy: Server) -> None:
    r = behind_proxy.get("/probe?hdr&env", headers={"X-Request-Id": "edge-42.a_b:c/d"})
    assert r.headers["X-Request-Id"] == "edge-42.a_b:c/d"
    assert env_lines(r.text)["X_REQUEST_ID"] == "edge-42.a_b:c/d"


@pytest.mark.parametrize("given", ["two words", "x" * 201, "", 'quote"d', "semi;colon"])
def test_a_malformed_proxy_request_id_is_replaced(behind_proxy: Server, given: str) -> None:
    r = behind_proxy.get("/probe?hdr&env", headers={"X-Request-Id": given})
    assert GENERATED_ID.fullmatch(r.headers["X-Request-Id"])
    assert env_lines(r.text)["X_REQUEST_ID"] == r.headers["X-Request-Id"]


def test_text_logs_stay_gunicorns(behind_proxy: Server) -> None:
    behind_proxy.get("/probe/text-log?hdr&err=to%20stderr")
    access = re.compile(
        r'^127\.0\.0\.1 - - \[[^]]+\] "GET /probe/text-log\?hdr&err=to%20stderr HTTP/1\.1" 200 '
        r'0 "-" "python-requests/[^"]+"$',
        re.M,
    )
    deadline = time.monotonic() + 15
    while not access.search(behind_proxy.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = behind_proxy.log()
    assert access.search(log), log
    assert re.search(r"\[INFO\] \[/probe/\.\.\.\] to stderr$", log, re.M), log
    assert not re.search(r"^\{", log, re.M)


def test_nginx_request_id_reaches_the_module(tmp_path: Path, engine: str) -> None:
    """nginx as the README sets it up: ``proxy_set_header X-Request-Id $request_id``."""
    sock = tmp_path / "wagi.sock"
    config = write_config(tmp_path / "conf", '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    server = start_gunicorn(
        tmp_path,
        config,
        engine,
        workers=1,
        bind=f"unix:{sock}",
        wait=False,
        extra_env={"WAGI_TRUSTED_PROXY_HOPS": "1"},
    )
    try:
        with nginx_in_front(tmp_path, sock, server) as url:
            first = requests.get(url + "/p?hdr&env", timeout=10)
            second = requests.get(
                url + "/p?hdr&env", headers={"X-Request-Id": "from-the-client"}, timeout=10
            )
    finally:
        server.stop()
    for r in (first, second):
        # nginx's $request_id: 32 hex digits, like wagi's own, and the client's is replaced.
        assert GENERATED_ID.fullmatch(r.headers["X-Request-Id"])
        env = env_lines(r.text)
        # The header nginx sent is the id (wagi did not make one of its own).
        assert env["X_REQUEST_ID"] == env["HTTP_X_REQUEST_ID"] == r.headers["X-Request-Id"]
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


# --- JSON logs -----------------------------------------------------------------------------


def test_json_access_line(observed: tuple[Server, Metrics], engine: str) -> None:
    server, _ = observed
    r = server.get("/probe/x?hdr&print=hi", headers={"User-Agent": "observer/1"})
    assert r.content == b"hi\n"
    request_id = r.headers["X-Request-Id"]
    (access,) = [
        record
        for record in records_of(server, request_id, 1)
        if record["logger"] == "gunicorn.access"
    ]
    assert access["message"] == "GET /probe/x?hdr&print=hi 200"
    timing = {key: access.pop(key) for key in ("time", "pid", "duration_ms", "run_ms")}
    assert access == {
        "level": "INFO",
        "logger": "gunicorn.access",
        "message": "GET /probe/x?hdr&print=hi 200",
        "request_id": request_id,
        "engine": engine,
        "route": "/probe/...",
        "status": 200,
        "ending": "returned",
        "method": "GET",
        "target": "/probe/x?hdr&print=hi",
        "protocol": "HTTP/1.1",
        "bytes": 3,
        "remote_addr": "127.0.0.1",
        "user_agent": "observer/1",
    }
    assert 0 < timing["run_ms"] <= timing["duration_ms"] < 15_000


def test_json_records_of_a_trapped_module(observed: tuple[Server, Metrics], engine: str) -> None:
    server, _ = observed
    r = server.get("/probe?hdr&err=about%20to%20trap&trap")
    assert r.status_code == 500
    request_id = r.headers["X-Request-Id"]
    found = {rec["logger"]: rec for rec in records_of(server, request_id, 3)}
    assert found.keys() == {"wagi.module", "wagi", "gunicorn.access"}
    for record in found.values():
        assert (record["request_id"], record["engine"], record["route"]) == (
            request_id,
            engine,
            "/probe/...",
        )
        assert record["ending"] == "trapped"
        assert record["run_ms"] > 0 and record["duration_ms"] >= record["run_ms"]
    assert (found["wagi.module"]["message"], found["wagi.module"]["level"]) == (
        "about to trap",
        "INFO",
    )
    assert found["wagi"]["level"] == "ERROR"
    assert found["wagi"]["message"].startswith("[/probe/...] trapped: ")
    assert found["gunicorn.access"]["status"] == 500


def test_json_records_of_a_timeout(observed: tuple[Server, Metrics], engine: str) -> None:
    server, _ = observed
    r = server.get("/slow?hdr&loop")
    assert r.status_code == 504
    request_id = r.headers["X-Request-Id"]
    assert GENERATED_ID.fullmatch(request_id)
    if engine == "wasmer":
        # The watchdog answers and ends the worker, which never writes an access line.
        (event,) = records_of(server, request_id, 1)
        assert event["message"].startswith("wagi watchdog: [/slow] timed out after 1s")
        assert event["status"] == 504
    else:
        event, access = records_of(server, request_id, 2)
        assert event["message"] == "[/slow] timed out: the module was stopped at its 1 s timeout"
        assert (access["logger"], access["status"]) == ("gunicorn.access", 504)
        assert access["ending"] == "timed_out"
    assert (event["logger"], event["level"], event["route"], event["engine"]) == (
        "wagi",
        "ERROR",
        "/slow",
        engine,
    )
    assert event["ending"] == "timed_out"
    assert event["run_ms"] >= 1000


def test_json_module_stderr_in_the_log_dir(tmp_path: Path, engine: str) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    logs = tmp_path / "logs"
    server = start_gunicorn(
        tmp_path,
        config,
        engine,
        workers=1,
        extra_env={"WAGI_LOG_FORMAT": "json", "WAGI_LOG_DIR": str(logs)},
    )
    try:
        r = server.get("/p?hdr&err=one&err=two&exit=4")
        assert r.status_code == 500
    finally:
        server.stop()
    lines = [json.loads(line) for line in (logs / "p.stderr.log").read_text().splitlines()]
    assert [line["message"] for line in lines] == ["one", "two"]
    for line in lines:
        assert (line["logger"], line["route"], line["request_id"], line["ending"]) == (
            "wagi.module",
            "/p",
            r.headers["X-Request-Id"],
            "exited",
        )
    records(server)  # the rest of the log is JSON too


def test_wagi_run_writes_json_logs(tmp_path: Path, engine: str) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    ran = wagi(
        "run", "--config", str(config), "--engine", engine, "--log-format", "json",
        "/p?hdr&err=said&exit=3",
    )  # fmt: skip
    assert ran.stdout.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    module, event = [json.loads(line) for line in ran.stderr.decode().splitlines()]
    assert (module["logger"], module["message"]) == ("wagi.module", "said")
    assert (event["logger"], event["message"]) == ("wagi", "[/p] exited with code 3")
    for record in (module, event):
        assert GENERATED_ID.fullmatch(record["request_id"])
        assert (record["route"], record["engine"], record["ending"]) == ("/p", engine, "exited")


# --- metrics -------------------------------------------------------------------------------


def test_metrics_count_requests_and_durations(observed: tuple[Server, Metrics]) -> None:
    server, metrics = observed
    route = {"route": "/probe/..."}
    before = metrics.scrape()

    def was(name: str, **labels: str) -> float:
        return before.get((name, frozenset(labels.items())), 0.0)

    for i in range(5):
        assert server.get(f"/probe/n{i}?hdr&print={i}").status_code == 200
    ok = was("wagi_requests_total", status="200", **route) + 5
    assert metrics.wait_for("wagi_requests_total", ok, status="200", **route) == ok
    for name in ("wagi_request_duration_seconds_count", "wagi_module_run_duration_seconds_count"):
        assert metrics.value(name, **route) == was(name, **route) + 5
    assert metrics.value("wagi_module_run_duration_seconds_sum", **route) > was(
        "wagi_module_run_duration_seconds_sum", **route
    )
    returned = was("wagi_module_endings_total", ending="returned", **route) + 5
    assert metrics.value("wagi_module_endings_total", ending="returned", **route) == returned


def test_metrics_count_endings(observed: tuple[Server, Metrics]) -> None:
    server, metrics = observed
    trapped = metrics.value("wagi_module_endings_total", route="/probe/...", ending="trapped")
    timed_out = metrics.value("wagi_module_endings_total", route="/slow", ending="timed_out")
    assert server.get("/probe?hdr&trap").status_code == 500
    assert server.get("/slow?hdr&loop").status_code == 504
    labels = {"route": "/probe/...", "ending": "trapped"}
    assert metrics.wait_for("wagi_module_endings_total", trapped + 1, **labels) == trapped + 1
    labels = {"route": "/slow", "ending": "timed_out"}
    assert metrics.wait_for("wagi_module_endings_total", timed_out + 1, **labels) == timed_out + 1
    assert metrics.value("wagi_requests_total", route="/slow", status="504") == timed_out + 1


def test_metrics_are_not_served_on_the_application_port(
    observed: tuple[Server, Metrics], behind_proxy: Server
) -> None:
    server, metrics = observed
    assert "wagi_requests_total" in requests.get(metrics.url, timeout=10).text
    # There, /metrics is a path like any other: here the catch-all route's module answers.
    r = server.get("/metrics?hdr&print=from-the-module")
    assert (r.status_code, r.text) == (200, "from-the-module\n")
    assert behind_proxy.get("/metrics").status_code == 404


def test_metrics_count_worker_restarts(tmp_path: Path, engine: str) -> None:
    port = free_port()
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    server = start_gunicorn(
        tmp_path,
        config,
        engine,
        workers=1,
        gunicorn_args=("--max-requests", "3"),
        extra_env={"WAGI_METRICS_BIND": f"127.0.0.1:{port}"},
    )
    metrics = Metrics(f"http://127.0.0.1:{port}/metrics")
    try:
        starts = metrics.value("wagi_worker_starts_total")
        exits = metrics.value("wagi_worker_exits_total")
        assert starts - exits == 1  # the one worker
        # (The health checks may have used some of its 3 requests already.)
        for text in ("x", "y", "z"):
            assert server.get(f"/p?hdr&print={text}").text == text + "\n"
        exits = metrics.wait_for("wagi_worker_exits_total", exits + 1)
        assert exits >= 1
        assert metrics.wait_for("wagi_worker_starts_total", exits + 1) == exits + 1
        assert server.get("/p?hdr&print=again").text == "again\n"
    finally:
        server.stop()


def test_metrics_count_compiled_module_cache_lookups(tmp_path: Path, engine: str) -> None:
    module = tmp_path / "probe.wasm"
    shutil.copy(PROBE, module)
    cache = tmp_path / "cache"

    def serve(cache_dir: Path | str) -> tuple[Server, Metrics]:
        port = free_port()
        config = write_config(tmp_path / "conf", f'[[module]]\nroute = "/p"\nmodule = "{module}"\n')
        server = start_gunicorn(
            tmp_path / f"run{port}",
            config,
            engine,
            workers=1,
            extra_env={
                "WAGI_METRICS_BIND": f"127.0.0.1:{port}",
                "WAGI_CACHE_DIR": str(cache_dir),
            },
        )
        return server, Metrics(f"http://127.0.0.1:{port}/metrics")

    def lookups(metrics: Metrics) -> tuple[float, float]:
        return (
            metrics.value("wagi_module_cache_lookups_total", engine=engine, result="hit"),
            metrics.value("wagi_module_cache_lookups_total", engine=engine, result="miss"),
        )

    # The start-up check compiles into the cache, so the worker loads from it.
    server, metrics = serve(cache)
    try:
        assert lookups(metrics) == (1, 0)
        # A module replaced on disk is compiled again by the worker (a custom section
        # changes its bytes, not its behaviour).
        module.write_bytes(PROBE.read_bytes() + b"\x00\x05\x04test")
        assert server.get("/p?hdr&print=new").text == "new\n"
        assert lookups(metrics) == (1, 1)
    finally:
        server.stop()
    # A restart with a warm cache compiles nothing.
    server, metrics = serve(cache)
    try:
        assert lookups(metrics) == (1, 0)
    finally:
        server.stop()
    # Without a cache, every load compiles.
    server, metrics = serve("")
    try:
        assert lookups(metrics) == (0, 1)
    finally:
        server.stop()


def test_metrics_without_wagis_gunicorn_settings_are_refused(tmp_path: Path) -> None:
    """Without wagi's hooks nobody would serve the numbers: the worker refuses to serve
    (gunicorn without them builds the gateway at the first request)."""
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAGI_", "PROMETHEUS_"))}
    env |= {
        "WAGI_CONFIG": str(config),
        "WAGI_ENGINE": "wasmtime",
        "WAGI_CACHE_DIR": str(tmp_path / "cache"),
        "WAGI_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    }
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        # Started elsewhere than the checkout, so gunicorn finds no gunicorn.conf.py.
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wagi.wsgi:app", "-b", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = server.get("/p?hdr&print=x")
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, server.log()
                time.sleep(0.1)
        assert r.status_code == 500
    finally:
        server.stop()
    assert (
        "--metrics-bind needs wagi's gunicorn settings (wagi serve, or gunicorn -c "
        "gunicorn.conf.py)" in server.log()
    )


def test_a_busy_metrics_port_stops_start_up(tmp_path: Path, engine: str) -> None:
    config = write_config(tmp_path, '[[module]]\nroute = "/p"\nmodule = "{probe}"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_gunicorn(
            tmp_path,
            config,
            engine,
            workers=1,
            extra_env={"WAGI_METRICS_BIND": f"127.0.0.1:{port}"},
            wait=False,
        )
        try:
            assert server.process.wait(timeout=60) != 0
        finally:
            server.stop()
    assert (
        f"wagi cannot start: --metrics-bind 127.0.0.1:{port}: cannot serve metrics there: "
        "Address already in use" in server.log()
    )


# --- the two settings -----------------------------------------------------------------------


def test_settings_defaults_and_round_trip() -> None:
    defaults = settings.load(None, {})
    assert (defaults.log_format, defaults.metrics_bind) == ("text", None)
    given = settings.load(None, {"WAGI_LOG_FORMAT": "json", "WAGI_METRICS_BIND": "[::1]:9100"})
    assert (given.log_format, given.metrics_bind) == ("json", "[::1]:9100")
    assert settings.load(None, settings.to_environ(given)) == given
    assert settings.bind_address("[::1]:9100") == ("::1", 9100)
    assert settings.bind_address("0.0.0.0:80") == ("0.0.0.0", 80)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WAGI_LOG_FORMAT", "xml", "WAGI_LOG_FORMAT: expected one of text, json, got 'xml'"),
        ("WAGI_METRICS_BIND", "9100", "WAGI_METRICS_BIND: expected HOST:PORT"),
        ("WAGI_METRICS_BIND", "localhost:0", "WAGI_METRICS_BIND: expected HOST:PORT"),
        ("WAGI_METRICS_BIND", ":9100", "WAGI_METRICS_BIND: expected HOST:PORT"),
        ("WAGI_METRICS_BIND", "h:99999", "WAGI_METRICS_BIND: expected HOST:PORT"),
    ],
)
def test_bad_settings_are_named(variable: str, value: str, message: str) -> None:
    with pytest.raises(settings.SettingsError, match=re.escape(message)):
        settings.load(None, {variable: value})
