"""The runbook half of the CLI: `models ...`, `adapters ...`, `gpus`, `agents` and `events` talk
to a running service over HTTP. Errors are one line on stderr (the API's code and message),
never a traceback, and the exit code says what happened (see EXIT_CODES_HELP)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import yaml

from app import client_events, client_format

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_WAIT_TIMEOUT = 2
EXIT_UNREACHABLE = 3

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0  # a stop waits for the engine's SIGTERM grace (30 s by default)
DEFAULT_WAIT_TIMEOUT_S = 900.0  # the service's own default start timeout
POLL_INTERVAL_S = 0.5
# The service pings an idle event stream every 15 s; three missed pings mean a dead connection.
STREAM_READ_TIMEOUT_S = 45.0
FAILED_STATES = client_format.FAILED_STATES

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}  success (start/restart --wait: the engine runs; can-start: a start would pass)
  {EXIT_FAILURE}  the API refused the request (its code and message go to stderr), a wrong or
     missing token, the engine failed or degraded during --wait, or can-start says no
  {EXIT_WAIT_TIMEOUT}  usage error, or --wait-timeout passed before the engine was running
  {EXIT_UNREACHABLE}  the service could not be reached or did not answer within --timeout

environment:
  GPU_ORCH_URL        default for --url ({DEFAULT_URL})
  GPU_ORCH_API_TOKEN  default for --token (sent as `Authorization: Bearer`)"""


class CliFailure(Exception):
    """Ends a command: `message` goes to stderr and `exit_code` is returned."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class WaitClock(Protocol):
    """Time for `--wait` polling; tests may pass one that does not really sleep."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemWaitClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class ApiClient:
    """The service's HTTP API; every failure becomes a CliFailure with the operator's wording."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout_s: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )
        self._timeout_s = timeout_s

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        passthrough: tuple[int, ...] = (),
    ) -> httpx.Response:
        """The response; a status in `passthrough` is returned rather than raised."""
        try:
            response = self._http.request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            raise CliFailure(
                f"{self.base_url} did not answer {method} {path} within {self._timeout_s:g} s "
                "(raise --timeout?)",
                EXIT_UNREACHABLE,
            ) from None
        except httpx.HTTPError as error:
            raise CliFailure(
                f"cannot reach the service at {self.base_url}: {error}", EXIT_UNREACHABLE
            ) from None
        if response.status_code in passthrough:
            return response
        if response.status_code == 401:
            raise CliFailure(self._unauthorized())
        if response.status_code >= 400:
            raise CliFailure(client_format.api_error_message(response))
        return response

    @contextmanager
    def stream_lines(
        self, path: str, *, params: dict[str, Any] | None = None, headers: dict[str, str]
    ) -> Iterator[Iterator[str]]:
        """The lines of a streamed GET. An error status is a CliFailure; a connection that
        fails or breaks (also while the lines are read) is client_events.StreamLost."""
        timeout = httpx.Timeout(self._timeout_s, read=STREAM_READ_TIMEOUT_S)
        try:
            with self._http.stream(
                "GET", path, params=params, headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    if response.status_code == 401:
                        raise CliFailure(self._unauthorized())
                    raise CliFailure(client_format.api_error_message(response))
                yield response.iter_lines()
        except httpx.TimeoutException:
            raise client_events.StreamLost(
                f"{self.base_url} sent nothing on {path} for {STREAM_READ_TIMEOUT_S:g} s"
            ) from None
        except httpx.HTTPError as error:
            raise client_events.StreamLost(
                f"lost the connection to {self.base_url}: {error or type(error).__name__}"
            ) from None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliFailure(
                f"{method} {path} answered {response.status_code} without JSON"
            ) from None

    def _unauthorized(self) -> str:
        if self.token is None:
            return (
                f"unauthorized: {self.base_url} requires an API token and none was given "
                "(pass --token or set GPU_ORCH_API_TOKEN)"
            )
        return (
            f"unauthorized: {self.base_url} rejected the API token "
            "(check --token or GPU_ORCH_API_TOKEN)"
        )


def load_spec(source: str) -> dict[str, Any]:
    """A ModelSpec from a YAML or JSON file (JSON is YAML), or from stdin when `source` is `-`."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as error:
        raise CliFailure(f"cannot read {source}: {error.strerror or error}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CliFailure(f"{source} is neither YAML nor JSON: {error}") from None
    if not isinstance(document, dict):
        raise CliFailure(f"{source} must hold one mapping of spec fields (id, model, ...)")
    if document.get("kind") == "ModelManifest":
        raise CliFailure(
            f"{source} is a manifest: put it in the service's GPU_ORCH_CONFIG_DIR, which it "
            "syncs; `models create` takes a ModelSpec (id, model, gpu_memory_util, ...)"
        )
    return document


def emit(args: argparse.Namespace, document: Any, text: str) -> None:
    """`--json`: the API's document as it came; otherwise the rendered text."""
    print(json.dumps(document, indent=2) if args.json else text)


def wait_until_running(
    client: ApiClient,
    model_id: str,
    status: dict[str, Any],
    *,
    wait_timeout_s: float,
    clock: WaitClock,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Polls GET /models/ID every POLL_INTERVAL_S, reporting each state change, and returns the
    status once the engine runs. Raises CliFailure when it fails, degrades or is stopped
    (EXIT_FAILURE), or is not running within `wait_timeout_s` (EXIT_WAIT_TIMEOUT)."""
    deadline_s = clock.monotonic() + wait_timeout_s
    reported: object = None
    while True:
        state = status.get("state")
        if state != reported:
            if state not in FAILED_STATES:
                progress(client_format.status_line(model_id, status))
            reported = state
        if state == "running":
            return status
        if state in FAILED_STATES:
            raise CliFailure(client_format.status_line(model_id, status))
        if status.get("desired_state") == "stopped":
            raise CliFailure(f"{model_id}: stopped by someone else while waiting")
        remaining_s = deadline_s - clock.monotonic()
        if remaining_s <= 0:
            raise CliFailure(
                f"{model_id}: still {state} after {wait_timeout_s:g} s", EXIT_WAIT_TIMEOUT
            )
        clock.sleep(min(POLL_INTERVAL_S, remaining_s))
        status = client.json("GET", f"/models/{model_id}")["status"]


Action = Callable[[argparse.Namespace, ApiClient, WaitClock], int]


class _Command:
    """One subcommand: builds the client from the common options and turns failures into text."""

    def __init__(self, action: Action, clock: WaitClock) -> None:
        self.action = action
        self.clock = clock

    def __call__(self, args: argparse.Namespace) -> int:
        url = args.url or os.environ.get("GPU_ORCH_URL") or DEFAULT_URL
        token = args.token if args.token is not None else os.environ.get("GPU_ORCH_API_TOKEN")
        client = ApiClient(url, token, args.timeout)
        try:
            return self.action(args, client, self.clock)
        except CliFailure as failure:
            print(failure.message, file=sys.stderr)
            return failure.exit_code
        finally:
            client.close()


def _get(path: str, render: Callable[[Any], str], **query: str) -> Action:
    """GET `path` (`{id}` from the arguments; `query` maps parameters to argument names)."""

    def action(args: argparse.Namespace, client: ApiClient, _clock: WaitClock) -> int:
        params = {name: getattr(args, attribute) for name, attribute in query.items()}
        url = path.format(id=getattr(args, "id", ""))
        document = client.json("GET", url, params=params or None)
        emit(args, document, render(document))
        return EXIT_OK

    return action


def _models_create(args: argparse.Namespace, client: ApiClient, _clock: WaitClock) -> int:
    model = client.json("POST", "/models", body=load_spec(args.file))
    emit(args, model, f"created {model.get('id')}")
    return EXIT_OK


def _models_delete(args: argparse.Namespace, client: ApiClient, _clock: WaitClock) -> int:
    params = {"force": "true"} if args.force else None
    client.request("DELETE", f"/models/{args.id}", params=params)
    emit(args, {"id": args.id, "deleted": True}, f"deleted {args.id}")
    return EXIT_OK


def _lifecycle(command: str) -> Action:
    def action(args: argparse.Namespace, client: ApiClient, clock: WaitClock) -> int:
        params = {"force": "true"} if getattr(args, "force", False) else {}
        if command == "stop" and getattr(args, "wait", False):
            params["wait"] = "true"  # the service answers once the engine is stopped
        status = client.json("POST", f"/models/{args.id}/{command}", params=params or None)
        if command == "stop" or not getattr(args, "wait", False):
            emit(args, status, client_format.status_line(args.id, status))
            return EXIT_OK
        # With --json the progress goes to stderr so stdout stays one JSON document.
        stream = sys.stderr if args.json else sys.stdout
        final = wait_until_running(
            client,
            args.id,
            status,
            wait_timeout_s=args.wait_timeout,
            clock=clock,
            progress=lambda line: print(line, file=stream, flush=True),
        )
        if args.json:
            emit(args, final, "")
        return EXIT_OK

    return action


def _models_logs(args: argparse.Namespace, client: ApiClient, _clock: WaitClock) -> int:
    text = client.request("GET", f"/models/{args.id}/logs", params={"tail": args.tail}).text
    if args.json:
        emit(args, {"id": args.id, "lines": text.splitlines()}, "")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _models_can_start(args: argparse.Namespace, client: ApiClient, _clock: WaitClock) -> int:
    params = {"force": "true"} if args.force else None
    answer = client.json("GET", f"/models/{args.id}/can-start", params=params)
    emit(args, answer, client_format.can_start_report(answer))
    return EXIT_OK if answer.get("ok") else EXIT_FAILURE


def _adapters_add(args: argparse.Namespace, client: ApiClient, _clock: WaitClock) -> int:
    path = f"/models/{args.id}/adapters"
    response = client.request("POST", path, body={"name": args.name, "path": args.path})
    try:
        adapters = response.json()
    except ValueError:
        raise CliFailure(f"POST {path} answered {response.status_code} without JSON") from None
    created = response.status_code == 201
    emit(
        args,
        adapters,
        client_format.adapter_added_line(args.id, args.name, adapters, created=created),
    )
    return EXIT_OK


def _adapters_remove(args: argparse.Namespace, client: ApiClient, _clock: WaitClock) -> int:
    client.request("DELETE", f"/models/{args.id}/adapters/{quote(args.name, safe='')}")
    document = {"id": args.id, "adapter": args.name, "removed": True}
    emit(args, document, f"{args.id}: removed adapter {args.name}")
    return EXIT_OK


def _agents(args: argparse.Namespace, client: ApiClient, _clock: WaitClock) -> int:
    response = client.request("GET", "/agents", passthrough=(404,))
    # FastAPI's own 404 for an unknown path; a 404 the route itself raises has a code.
    if response.status_code == 404 and response.json().get("detail") == "Not Found":
        raise CliFailure(f"the service at {client.base_url} has no /agents route (older version?)")
    document = response.json()
    emit(args, document, client_format.agents_table(document))
    return EXIT_OK


def _events(args: argparse.Namespace, client: ApiClient, clock: WaitClock) -> int:
    if not args.follow:
        if args.model is None:
            raise CliFailure("give a MODEL, or --follow for the events of the whole node")
        events = client.json("GET", f"/models/{args.model}/events", params={"limit": args.limit})
        emit(args, events, client_format.events_table(events))
        return EXIT_OK
    params = {"model": args.model} if args.model else None

    def open_stream(after_id: int | None) -> AbstractContextManager[Iterator[str]]:
        headers = {"Accept": "text/event-stream"}
        if after_id is not None:
            headers["Last-Event-ID"] = str(after_id)
        return client.stream_lines("/events", params=params, headers=headers)

    def show(event: dict[str, Any]) -> None:
        line = json.dumps(event) if args.json else client_format.event_line(event)
        print(line, flush=True)

    follower = client_events.Follower(
        open_stream=open_stream,
        on_event=show,
        on_note=lambda note: print(note, file=sys.stderr, flush=True),
        sleep=clock.sleep,
        count=args.count,
        last_id=args.since,
    )
    try:
        follower.run()
    except client_events.StreamLost as lost:
        raise CliFailure(str(lost), EXIT_UNREACHABLE) from None
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends
    return EXIT_OK


def _events_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help="only this model's events")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="print events as they happen (Ctrl-C ends)"
    )
    parser.add_argument(
        "--since", type=int, metavar="ID", help="with --follow: first replay the events after ID"
    )
    parser.add_argument("--count", type=int, metavar="N", help="with --follow: exit after N events")
    parser.add_argument(
        "--limit", type=int, default=100, metavar="N", help="without --follow: newest N events"
    )


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("service")
    group.add_argument("--url", help=f"the service (default: GPU_ORCH_URL or {DEFAULT_URL})")
    group.add_argument("--token", help="API token (default: GPU_ORCH_API_TOKEN)")
    group.add_argument("--json", action="store_true", help="print the API's JSON, not a table")
    group.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for each HTTP answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    return common


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="poll until running; print changes")
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT_S,
        metavar="S",
        help=f"give up waiting after S seconds, exit {EXIT_WAIT_TIMEOUT} "
        f"(default {DEFAULT_WAIT_TIMEOUT_S:g})",
    )


def add_client_commands(commands: Any, clock: WaitClock | None = None) -> None:
    """Registers `models ...`, `adapters ...`, `gpus`, `agents` and `events` on the
    `gpu-orchestrator` subparsers; `clock` paces `--wait` polling (the system clock when None)."""
    wait_clock: WaitClock = clock if clock is not None else SystemWaitClock()
    common = _common_options()
    formatting: dict[str, Any] = {
        "parents": [common],
        "epilog": EXIT_CODES_HELP,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }

    def leaf(group: Any, name: str, action: Action, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, **formatting
        )
        parser.set_defaults(handler=_Command(action, wait_clock))
        return parser

    models_parser = commands.add_parser(
        "models",
        help="list, create, start, stop and inspect models on a running service",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = models_parser.add_subparsers(dest="models_command", required=True)
    list_models = _get("/models", client_format.models_table)
    leaf(models, "list", list_models, "the registry: state, port, GPUs, counters")
    show = _get("/models/{id}", client_format.model_details)
    leaf(models, "show", show, "a model's spec and status").add_argument("id")
    create = leaf(models, "create", _models_create, "register a model from a YAML/JSON spec")
    create.add_argument("-f", "--file", required=True, help="spec file, or - for stdin")
    delete = leaf(models, "delete", _models_delete, "remove a model (stopped, or with --force)")
    delete.add_argument("id")
    delete.add_argument("--force", action="store_true", help="stop a running engine first")
    start = leaf(models, "start", _lifecycle("start"), "start a model's engine")
    start.add_argument("id")
    start.add_argument("--force", action="store_true", help="start despite a low-memory alert")
    _wait_options(start)
    stop = leaf(models, "stop", _lifecycle("stop"), "stop a model's engine")
    stop.add_argument("id")
    stop.add_argument(
        "--wait", action="store_true", help="answer once the engine is stopped, not at once"
    )
    restart = leaf(models, "restart", _lifecycle("restart"), "stop, then start the engine")
    restart.add_argument("id")
    restart.add_argument("--force", action="store_true", help="start despite a low-memory alert")
    _wait_options(restart)
    logs = leaf(models, "logs", _models_logs, "the end of the engine's log")
    logs.add_argument("id")
    logs.add_argument("--tail", type=int, default=100, metavar="N", help="lines (default 100)")
    list_events = _get("/models/{id}/events", client_format.events_table, limit="limit")
    events = leaf(models, "events", list_events, "transitions, failures and restarts")
    events.add_argument("id")
    events.add_argument("--limit", type=int, default=100, metavar="N", help="newest N events")
    can_start = leaf(models, "can-start", _models_can_start, "headroom dry run of a start")
    can_start.add_argument("id")
    can_start.add_argument("--force", action="store_true", help="ignore the low-memory alert")
    adapters_parser = commands.add_parser(
        "adapters",
        help="list, add and remove a model's LoRA adapters (live on a running engine)",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    adapters = adapters_parser.add_subparsers(dest="adapters_command", required=True)
    list_adapters = _get("/models/{id}/adapters", client_format.adapters_table)
    list_help = "a model's adapters: rank, loaded on the running engine, since when"
    leaf(adapters, "list", list_adapters, list_help).add_argument("id", metavar="MODEL")
    add_help = "add an adapter: loaded live on a running engine (same pid), kept in the spec"
    add_adapter = leaf(adapters, "add", _adapters_add, add_help)
    add_adapter.add_argument("id", metavar="MODEL")
    add_adapter.add_argument("name", metavar="NAME", help="the name agents send as `model`")
    add_adapter.add_argument(
        "path",
        metavar="PATH",
        help="the adapter's directory as the service sees it (absolute, or in MODEL_STORE_ROOT)",
    )
    remove_help = "remove an adapter: unloaded live from a running engine, dropped from the spec"
    remove_adapter = leaf(adapters, "remove", _adapters_remove, remove_help)
    remove_adapter.add_argument("id", metavar="MODEL")
    remove_adapter.add_argument("name", metavar="NAME")
    gpus = _get("/gpus", client_format.gpus_report)
    leaf(commands, "gpus", gpus, "per-GPU memory, reservations, models and alerts")
    nodes_help = "the cluster's nodes: alive, GPUs, free memory, models, last heartbeat"
    leaf(commands, "nodes", _get("/nodes", client_format.nodes_table), nodes_help)
    leaf(commands, "agents", _agents, "which agent's adapter sits on which model, and where")
    events_help = "the node's events: --follow prints them live, as GET /events streams them"
    _events_options(leaf(commands, "events", _events, events_help))
