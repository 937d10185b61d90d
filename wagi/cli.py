"""The ``wagi`` command: ``serve``, ``run``, ``check`` and ``push``.

Every server option (see :mod:`wagi.config.settings`) is a flag of each command and a
``WAGI_*`` environment variable; flags win.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from werkzeug.test import EnvironBuilder

from wagi import __version__
from wagi.config import (
    Config,
    ConfigError,
    LocalModule,
    OciModule,
    load_config,
    parse_oci_reference,
)
from wagi.config import settings as wagi_settings
from wagi.config.sources import SourceError, pull_modules, push_module
from wagi.execution.engine_choice import (
    EngineChoice,
    EngineUnavailable,
    choose_engine,
    worker_problem,
)
from wagi.execution.handlers import Handler, StartupError
from wagi.server.gateway import CgiHttpResponse, Gateway, ResponseCut
from wagi.server.watchdog import tls_warning
from wagi.server.worker import Worker, build_worker

DESCRIPTION = "wagi: run WebAssembly (WASI) modules as CGI handlers behind gunicorn."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wagi", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"wagi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve the routes of modules.toml with gunicorn",
        description="Serve modules.toml with gunicorn's pre-fork workers. Options wagi does not "
        "know (--bind, --workers, --certfile, ...) are passed to gunicorn.",
        epilog="example: wagi serve --config samples/modules.toml --bind 127.0.0.1:3000",
        allow_abbrev=False,
    )
    wagi_settings.add_arguments(serve)

    run = commands.add_parser(
        "run",
        help="answer one request from the command line, without a server",
        description="Answer one HTTP request with the configured modules and print the HTTP "
        "response (status line, headers, blank line, body) to stdout.",
        epilog="example: wagi run --config samples/modules.toml '/env/x?greet=matt'",
    )
    run.add_argument("path", help="request path with optional query, e.g. '/env?a=1'")
    run.add_argument("-X", "--method", default="GET", help="request method [GET]")
    run.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: value'",
        help="request header (repeatable)",
    )
    body = run.add_mutually_exclusive_group()
    body.add_argument("-d", "--data", help="request body")
    body.add_argument(
        "--data-file", type=Path, metavar="PATH", help="request body from a file ('-' for stdin)"
    )
    wagi_settings.add_arguments(run)

    check = commands.add_parser(
        "check",
        help="check modules.toml, compile its modules and print the routing table",
        description="Check the configuration, choose the engine, compile every module (filling "
        "the cache) and print the routing table, most specific route first.",
    )
    check.add_argument("--quiet", action="store_true", help="print only the summary")
    check.add_argument(
        "--pins-file",
        type=Path,
        metavar="PATH",
        help="write the digest each OCI tag was resolved to, as JSON, to PATH (gunicorn's "
        "hooks pass it on to the workers, so they load exactly what was checked)",
    )
    check.add_argument(
        "--worker-class",
        default="sync",
        metavar="CLASS",
        help="gunicorn worker class to check the engine against [sync]",
    )
    check.add_argument(
        "--threads", type=int, default=1, metavar="N", help="gunicorn threads per worker [1]"
    )
    check.add_argument(
        "--tls",
        action="store_true",
        help="gunicorn serves TLS itself (--certfile): warn where a timeout cannot answer 504",
    )
    wagi_settings.add_arguments(check)

    push = commands.add_parser(
        "push",
        help="publish a module to an OCI registry",
        description="Publish a .wasm (or .wat, assembled first) module as an OCI artifact, "
        "the way wasm-to-oci and WAGI 0.8 did, and print its digest on stdout.",
        epilog="example: wagi push hello.wasm oci://127.0.0.1:5000/team/hello:1.0",
    )
    push.add_argument("module", type=Path, help="the .wasm or .wat file")
    push.add_argument("reference", help="where to publish it: oci://HOST[:PORT]/REPOSITORY:TAG")
    wagi_settings.add_arguments(push, only=("oci_ca_file", "oci_plain_http"))
    return parser


def _load(args: argparse.Namespace) -> tuple[wagi_settings.ServerSettings, Config, EngineChoice]:
    server_settings = wagi_settings.load(args)
    config = load_config(server_settings.config)
    choice = choose_engine(
        server_settings.engine, config, server_settings.max_memory, server_settings.kernel_wall
    )
    return server_settings, config, choice


def check(args: argparse.Namespace) -> int:
    server_settings, config, choice = _load(args)
    problem = worker_problem(choice, args.worker_class, args.threads)
    if problem:
        raise EngineUnavailable(problem)
    config, pins = pull_modules(config, server_settings)
    if args.pins_file is not None:
        args.pins_file.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    worker = build_worker(server_settings, config, choice)
    routes = worker.table.routes()
    print(
        f"wagi {__version__}: {config.path}: {len(routes)} routes; engine {choice.name} "
        f"{worker.engine.version} ({choice.reason}); {choice.describe_limits()}"
    )
    if args.tls and not choice.capabilities.interruptible:
        print(f"  warning: {tls_warning(choice.name)}")
    # Always printed (it reaches the start-up log): where the kernel wall stands.
    for line in worker.sites.plan.describe(config):
        print(f"  {line}")
    for reference, digest in sorted(pins.items()):
        # Always printed: the start-up log says which bytes each tag stood for.
        print(f"  oci://{reference} is {digest}")
    if not args.quiet:
        width = max(len(r.pattern) for r in routes)
        # A host column only when some route has a host ("*": every host), so a table
        # without virtual hosts reads as it always did.
        hosts = [r.host or "*" for r in routes] if any(r.host for r in routes) else None
        host_width = max(map(len, hosts)) if hosts else 0
        for number, route in enumerate(routes):
            handler = route.handler
            module = _shown_path(handler.entry.module, config.path)
            host = f"{hosts[number]:<{host_width}}  " if hosts else ""
            print(f"  {host}{route.pattern:<{width}}  {module}  {_runs(worker, handler)}")
    return 0


def _runs(worker: Worker, handler: Handler) -> str:
    """What a route runs: a core module's export, or what a component is."""
    try:
        loaded = worker.loader.get(handler.entry.module)
    except Exception:  # shown as configured; start-up already said what is wrong
        return handler.entrypoint
    return loaded.describe() if loaded.kind == "component" else handler.entrypoint


def _shown_path(module: LocalModule | OciModule, config: Path) -> str:
    """A module as the table shows it: a local file relative to modules.toml where it is
    below it, an OCI module by its reference."""
    if not isinstance(module, LocalModule):
        return str(module)
    try:
        return str(module.path.relative_to(config.resolve().parent))
    except ValueError:
        return str(module.path)


def run(args: argparse.Namespace) -> int:
    server_settings, config, choice = _load(args)
    config, _ = pull_modules(config, server_settings)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    if server_settings.log_format == "json":
        from wagi.observability.logformat import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            raise ConfigError(f"--header: expected 'Name: value', got {header!r}")
        headers.append((name.strip(), value.strip()))
    if args.data_file is not None:
        data = (
            sys.stdin.buffer.read() if str(args.data_file) == "-" else args.data_file.read_bytes()
        )
    else:
        data = (args.data or "").encode()
    # Last: the module runs here, behind the wall that confines this process from now on
    # (what the command still reads, it has read).
    worker = build_worker(server_settings, config, choice, confine=True)
    path, _, query = args.path.partition("?")
    builder = EnvironBuilder(
        path=path,
        query_string=query,
        method=args.method.upper(),
        headers=headers,
        data=data,
        environ_overrides={"RAW_URI": args.path, "REMOTE_ADDR": "127.0.0.1"},
    )
    environ = builder.get_environ()
    if not any(name.lower() == "host" for name, _ in headers):
        environ.pop("HTTP_HOST", None)
    if not choice.capabilities.interruptible:
        # Nothing in this process can stop such a module (not even Ctrl-C): past the
        # longest timeout, SIGALRM's default action ends the command (exit status 142).
        longest = max(route.handler.limits.timeout or 0 for route in worker.table.routes())
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, longest)
    # The server sends no Content-Type a module did not send; neither does this.
    response = CgiHttpResponse.from_app(Gateway(worker), environ)
    signal.setitimer(signal.ITIMER_REAL, 0)
    out = sys.stdout.buffer
    out.write(f"HTTP/1.1 {response.status}\r\n".encode("latin-1"))
    for name, value in response.headers.items():
        out.write(f"{name}: {value}\r\n".encode("latin-1"))
    out.write(b"\r\n")
    try:
        for chunk in response.iter_encoded():  # as the module writes it, like the server
            out.write(chunk)
    except ResponseCut as exc:
        # The server closes the connection here; the command ends the output and says why.
        out.flush()
        print(f"wagi: the response was cut: {exc}", file=sys.stderr)
        return 1
    out.flush()
    return 0


def serve(args: argparse.Namespace, gunicorn_args: Sequence[str]) -> int:
    server_settings = wagi_settings.load(args)
    config = load_config(server_settings.config)
    choose_engine(
        server_settings.engine, config, server_settings.max_memory, server_settings.kernel_wall
    )
    # Workers read their settings from the environment, with an absolute config path so
    # gunicorn's --chdir cannot change which file they read.
    environ = wagi_settings.to_environ(server_settings)
    environ["WAGI_CONFIG"] = str(Path(server_settings.config).resolve())
    if server_settings.env_file is not None:
        environ["WAGI_ENV_FILE"] = str(server_settings.env_file.resolve())
    os.environ.update(environ)

    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["wagi serve", "-c", "python:wagi.gunicorn_conf", *gunicorn_args, "wagi.wsgi:app"]
    WSGIApplication("%(prog)s [OPTIONS]").run()
    return 0


def push(args: argparse.Namespace) -> int:
    server_settings = wagi_settings.load(args)
    try:
        target = parse_oci_reference(args.reference)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    digest = push_module(args.module, target, server_settings)
    print(f"wagi: pushed {args.module} to {target}", file=sys.stderr)
    print(
        f"wagi: pin it in modules.toml as oci://{target.registry}/{target.repository}@{digest}",
        file=sys.stderr,
    )
    print(digest)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "serve":
            return serve(args, extra)
        if args.command == "run":
            return run(args)
        if args.command == "push":
            return push(args)
        return check(args)
    except (
        ConfigError,
        StartupError,
        SourceError,
        EngineUnavailable,
        wagi_settings.SettingsError,
    ) as exc:
        print(f"wagi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
