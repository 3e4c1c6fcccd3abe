"""`gpu-orchestrator serve | oom-scan FILE... | models ... | gpus | agents`."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from app.orchestrator.oom import scan_file

LOOPBACK_NAMES = {"localhost"}
EXIT_REFUSED_INSECURE = 2
EXIT_DATABASE_HELD = 4
SERVE_EXIT_CODES_HELP = f"""\
exit codes:
  0  stopped normally
  {EXIT_REFUSED_INSECURE}  refused: a non-loopback --host without GPU_ORCH_API_TOKEN (see
     --insecure)
  3  the app failed to start (uvicorn's code; the log says why)
  {EXIT_DATABASE_HELD}  refused: another orchestrator holds the database (its pid, host and start
     time go to stderr); one database, one orchestrator
"""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    from app.settings import load_settings

    # Decided before the app and uvicorn are even imported, so a refusal is immediate.
    settings = load_settings()
    if not is_loopback(args.host) and settings.api_token is None:
        if not args.insecure:
            print(
                f"refusing to listen on {args.host} without GPU_ORCH_API_TOKEN: anyone who can "
                "reach it could start processes on this node. Set a token, bind to 127.0.0.1, "
                "or pass --insecure.",
                file=sys.stderr,
            )
            return EXIT_REFUSED_INSECURE
        # Printed, not logged: nothing has configured logging yet (uvicorn does so later), and
        # this line must reach the console or journal whatever the logging setup.
        print(
            f"WARNING: INSECURE: serving on {args.host} without GPU_ORCH_API_TOKEN; anyone who "
            "can reach this address can start processes on this node.",
            file=sys.stderr,
            flush=True,
        )
    from app.store.db import is_shared
    from app.store.instance_lock import InstanceLockError, instance_lock_for

    # Taken here, before uvicorn runs the lifespan: a refusal is then one line on stderr and a
    # code of its own, not a lifespan traceback and uvicorn's generic exit 3.
    lock = instance_lock_for(settings.resolved_database_url)
    if lock is not None:
        try:
            lock.acquire()
        except InstanceLockError as error:
            print(f"refusing to start: {error}", file=sys.stderr)
            return EXIT_DATABASE_HELD
    if settings.node_url is None:
        # How the other nodes reach this one, unless said otherwise: its own listening address.
        wildcard = args.host in ("0.0.0.0", "::", "")  # noqa: S104 (compared, not bound)
        reach = socket.gethostname() if wildcard else args.host
        settings = settings.model_copy(update={"node_url": f"http://{reach}:{args.port}"})
    overrides = None
    if is_shared(settings.resolved_database_url):
        from app.orchestrator.cluster.membership import NodeNameHeldError
        from app.orchestrator.wiring import Overrides, register_node

        # On a shared database the node's name is its lease: a second live process with the
        # same name is refused here, like a second one on a SQLite file above.
        try:
            overrides = Overrides(membership=register_node(settings))
        except NodeNameHeldError as error:
            print(f"refusing to start: {error}", file=sys.stderr)
            return EXIT_DATABASE_HELD
    import uvicorn

    from app.main import create_app

    try:
        app = create_app(settings, overrides, instance_lock=lock)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        if lock is not None:
            lock.release()
    return 0


def _oom_scan(args: argparse.Namespace) -> int:
    for name in args.files:
        try:
            result = scan_file(Path(name))
        except OSError as error:
            result = {
                "file": name,
                "kind": None,
                "line": None,
                "evidence": None,
                "error": str(error),
            }
        print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from app.client_cli import EXIT_CODES_HELP

    parser = argparse.ArgumentParser(
        prog="gpu-orchestrator",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the control plane (uvicorn)",
        description="Run the control plane. One orchestrator per database: a second one on the "
        "same SQLite file refuses to start and names the first.",
        epilog=SERVE_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback host without a token"
    )
    serve.set_defaults(handler=_serve)

    scan = commands.add_parser("oom-scan", help="classify out-of-memory failures in log files")
    scan.add_argument("files", nargs="+")
    scan.set_defaults(handler=_oom_scan)

    from app.client_cli import add_client_commands

    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
