"""A stand-in for `vllm serve`: a tiny OpenAI-shaped HTTP server with flags for each engine state.

It is started exactly like vLLM: fake flags first, then the model, then vLLM's own flags (those it
does not know are ignored):

    python tests/fakes/fake_engine.py [FAKE FLAGS] MODEL --host H --port P --served-model-name N ...

Fake flags may also come from the env var FAKE_ENGINE_ARGS (shlex-split, prepended), so one model's
spec env can vary its behaviour. The socket is bound only once `--ready-delay-s` has passed, so
`/health` is refused while "loading", as with a real vLLM. Failure flags print the real vLLM/PyTorch
messages that the orchestrator's classifier must recognise. Only the standard library is imported so
that it starts in tens of milliseconds under any Python 3.11+. Access lines follow vLLM's flags:
none with `--disable-uvicorn-access-log`, none for the paths of
`--disable-access-log-for-endpoints` (comma-separated, matched exactly, the query ignored).

Routes: GET /health, GET /v1/models, POST /v1/completions, /v1/chat/completions (both streamed as
server-sent events with `"stream": true`, a token per `--token-interval-s`), /v1/embeddings,
GET /fake/state (argv after the program
name with FAKE_ENGINE_ARGS prepended, env subset, pid, pgid, child_pid, listening_at, ready_at =
time.time() when /health first answered 200, requests = how many of each path were served, /health
included). `--record FILE` writes that state once listening and again when /health first answers
200.

One file on purpose, although long: it runs by path under a bare interpreter with nothing to import.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

FAILURE_KINDS = ("gpu_oom", "kv_cache_insufficient", "host_oom", "exit")
_ENV_NAMES = ("VLLM_ADAPTER_PATHS", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
_ENV_PREFIXES = ("FAKE_", "GPU_ORCH_", "VLLM_ALLOW_", "VLLM_SERVER_")
_CORE = "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py"

_GPU_OOM_TRACE = f"""\
Traceback (most recent call last):
  File "{_CORE}", line 506, in run_engine_core
    engine_core = EngineCoreProc(*args, **kwargs)
  File "{_CORE}", line 390, in __init__
    super().__init__(vllm_config, executor_class, log_stats,
  File "{_CORE}", line 76, in __init__
    self.model_executor = executor_class(vllm_config)
  File "/usr/local/lib/python3.12/dist-packages/vllm/worker/worker_base.py", line 603, in load_model
    self.model_runner.load_model()
  File "/usr/local/lib/python3.12/dist-packages/torch/nn/modules/module.py", line 1355, in convert
    return t.to(
           ^^^^^
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total \
capacity of 79.19 GiB of which 1.12 GiB is free. Including non-PyTorch memory, this process has \
78.06 GiB memory in use. Of the allocated memory 76.31 GiB is allocated by PyTorch, and 1.24 GiB \
is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting \
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for \
Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)
"""

_KV_CACHE_TRACE = f"""\
Traceback (most recent call last):
  File "{_CORE}", line 506, in run_engine_core
    engine_core = EngineCoreProc(*args, **kwargs)
  File "{_CORE}", line 83, in __init__
    self._initialize_kv_caches(vllm_config)
  File "{_CORE}", line 141, in _initialize_kv_caches
    get_kv_cache_config(vllm_config, kv_cache_spec_one_worker,
  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/core/kv_cache_utils.py", line 699, in \
get_kv_cache_config
    check_enough_kv_cache_memory(vllm_config, kv_cache_spec, available_memory)
  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/core/kv_cache_utils.py", line 527, in \
check_enough_kv_cache_memory
    raise ValueError(
ValueError: To serve at least one request with the models's max seq len (4096), (2.00 GiB KV cache \
is needed, which is larger than the available KV cache memory (1.00 GiB). Based on the available \
memory, the estimated maximum model length is 2048. Try increasing `gpu_memory_utilization` or \
decreasing `max_model_len` when initializing the engine.
"""

_EXIT_TRACE = f"""\
Traceback (most recent call last):
  File "{_CORE}", line 517, in run_engine_core
    engine_core.run_busy_loop()
  File "{_CORE}", line 544, in run_busy_loop
    self._process_engine_step()
RuntimeError: engine core died unexpectedly
"""

_TRACES = {"gpu_oom": _GPU_OOM_TRACE, "kv_cache_insufficient": _KV_CACHE_TRACE, "exit": _EXIT_TRACE}


def build_parser() -> argparse.ArgumentParser:
    """The fake flags plus the vLLM flags the fake acts on; any other flag is ignored."""
    parser = argparse.ArgumentParser(prog="fake_engine", allow_abbrev=False)
    parser.add_argument("model", nargs="?")
    parser.add_argument("--model", dest="model_option")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=[])
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--lora-modules", nargs="+", default=[])
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    # vLLM's access-log flags (vllm/entrypoints/launchers/cli_args.py, FrontendArgs): no access
    # line at all, or none for these comma-separated paths (matched exactly, query ignored).
    parser.add_argument("--disable-uvicorn-access-log", action="store_true")
    parser.add_argument("--disable-access-log-for-endpoints", default="")
    fake_lora = parser.add_argument_group("fake runtime LoRA")
    fake_lora.add_argument("--lora-load-delay-s", type=float, default=0.0)
    fake = parser.add_argument_group("fake engine behaviour")
    fake.add_argument("--ready-delay-s", type=float, default=0.0)
    fake.add_argument("--exit-during-start", type=int, metavar="CODE")
    fake.add_argument("--oom-after-s", type=float)
    fake.add_argument("--oom-kind", choices=FAILURE_KINDS)
    fake.add_argument("--oom-during-start", action="store_true")
    fake.add_argument("--ignore-sigterm", action="store_true")
    fake.add_argument("--fork-child", action="store_true")
    fake.add_argument("--health-fail-after-s", type=float)
    fake.add_argument("--exit-after-s", type=float)
    fake.add_argument("--close-log", action="store_true")
    fake.add_argument(
        "--grow-memory-after-s",
        type=float,
        help="then allocate memory without end, until the kernel's OOM killer ends the process "
        "at its cgroup's limit (it prints nothing, as a real OOM kill)",
    )
    fake.add_argument("--record", metavar="FILE")
    fake.add_argument(
        "--alive-log",
        metavar="FILE",
        help="while serving, append a JSON line {pid, model, node, t} every 50 ms (O_APPEND: "
        "lines of several engines never interleave): the engines' own record of when each ran",
    )
    fake.add_argument(
        "--token-interval-s",
        type=float,
        default=0.0,
        help="pause before each streamed token (and before the first one)",
    )
    fake.add_argument(
        "--tcp-nodelay",
        action="store_true",
        help="send each write at once (TCP_NODELAY), as vLLM's uvicorn does; without it a small "
        "write after the headers waits for the client's delayed ACK (~40 ms on Linux)",
    )
    return parser


def parse_lora_modules(tokens: list[str]) -> dict[str, str]:
    """vLLM's `--lora-modules` values, `name=path` or JSON `{"name": ..., "path": ...}`."""
    modules: dict[str, str] = {}
    for token in tokens:
        if token.startswith("{"):
            entry = json.loads(token)
            modules[str(entry["name"])] = str(entry["path"])
        else:
            name, _, path = token.partition("=")
            modules[name] = path
    return modules


class Log:
    """vLLM-style log lines, one flush per line, silent once `--close-log` closed fds 1 and 2."""

    def __init__(self) -> None:
        # Reentrant: a signal handler that logs may interrupt the main thread while it holds this.
        self._lock = threading.RLock()
        self.closed = False

    def _write(self, stream: TextIO, text: str) -> None:
        with self._lock:
            if self.closed:
                return  # fds 1 and 2 may now belong to sockets: never write to them again
            try:
                stream.write(text if text.endswith("\n") else text + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # the reader went away; the engine keeps serving like vLLM does

    def vllm(self, level: str, source: str, message: str) -> None:
        """A line from vLLM's own logger (stdout), each line of `message` prefixed as vLLM does."""
        prefix = f"{level} {time.strftime('%m-%d %H:%M:%S')} [{source}]"
        self._write(sys.stdout, "\n".join(f"{prefix} {line}" for line in message.splitlines()))

    def uvicorn(self, message: str, stream: TextIO | None = None) -> None:
        """A uvicorn line (`INFO:     ...`), on stderr unless it is an access line."""
        self._write(stream or sys.stderr, f"INFO:     {message}")

    def raw(self, text: str) -> None:
        """Unprefixed text on stderr, e.g. a traceback printed by a dying process."""
        self._write(sys.stderr, text)

    def close_fds(self) -> None:
        with self._lock:
            sys.stdout.flush()
            sys.stderr.flush()
            os.close(1)
            os.close(2)
            self.closed = True


class FakeEngine:
    """One fake engine process: its options, its readiness and its state document."""

    def __init__(self, options: argparse.Namespace, argv: list[str]) -> None:
        self.options = options
        self.argv = argv
        self.log = Log()
        self.model: str = options.model or options.model_option or "facebook/opt-125m"
        self.served_names: list[str] = options.served_model_name or [self.model]
        self.lora_modules = parse_lora_modules(options.lora_modules)
        self.quiet_paths = frozenset(
            path.strip() for path in options.disable_access_log_for_endpoints.split(",")
        ) - {""}
        self.child_pid: int | None = None
        self.listening_at: float | None = None
        self.ready_at: float | None = None
        self.health_failing = False
        # Either failure flag arms a failure; the kind defaults to a CUDA OOM.
        armed = options.oom_kind or options.oom_after_s is not None or options.oom_during_start
        self.failure_kind: str | None = (options.oom_kind or "gpu_oom") if armed else None
        self._state_lock = threading.Lock()
        # Streams the client went away from before their end, and requests served, by path.
        self.streams_aborted = 0
        self.streams_active = 0
        self.streams_peak = 0
        self.sleeping = 0  # the sleep level, 0 when awake
        self.requests: dict[str, int] = {}

    def state(self) -> dict[str, Any]:
        """The document behind GET /fake/state and `--record`."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name in _ENV_NAMES or name.startswith(_ENV_PREFIXES)
        }
        return {
            "argv": self.argv,
            "env": env,
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "child_pid": self.child_pid,
            "model": self.model,
            "served_model_names": self.served_names,
            "lora_modules": self.lora_modules,
            "listening_at": self.listening_at,
            "ready_at": self.ready_at,
            "streams_aborted": self.streams_aborted,
            "streams_active": self.streams_active,
            "streams_peak": self.streams_peak,
            "sleeping": self.sleeping,
            "requests": dict(self.requests),
        }

    def count(self, attribute: str, delta: int) -> None:
        with self._state_lock:
            setattr(self, attribute, getattr(self, attribute) + delta)
            self.streams_peak = max(self.streams_peak, self.streams_active)

    def count_request(self, path: str) -> None:
        with self._state_lock:
            self.requests[path] = self.requests.get(path, 0) + 1

    def mark_health_ok(self) -> None:
        with self._state_lock:
            if self.ready_at is not None:
                return
            self.ready_at = time.time()
        self.record()

    def record(self) -> None:
        """Write the state to `--record` atomically (tmp + rename): no reader sees half a file."""
        if self.options.record is None:
            return
        tmp_path = f"{self.options.record}.{os.getpid()}.tmp"
        with self._state_lock, open(tmp_path, "w", encoding="utf-8") as tmp_file:
            json.dump(self.state(), tmp_file)
            tmp_file.close()
            os.replace(tmp_path, self.options.record)

    def fail(self, kind: str, during_start: bool) -> None:
        """Print the real failure output for `kind`, then die the way vLLM (or the kernel) does."""
        if kind == "host_oom":
            # The kernel's OOM killer gives no traceback; the shell or journal shows `Killed`.
            self.log.raw("Killed")
            os.kill(os.getpid(), signal.SIGKILL)
        # vLLM logs a one-line header; the engine-core process prints the traceback itself.
        header = "EngineCore failed to start." if during_start else "EngineCore hit a fatal error."
        self.log.vllm("ERROR", "core.py:515", header)
        self.log.raw("Process EngineCore_0:\n" + _TRACES[kind])
        if during_start:
            self.log.raw("RuntimeError: Engine core initialization failed. See root cause above.")
        os._exit(1)

    def engine_core_died(self) -> None:
        """vLLM's API server exits 0 when its engine core dies while serving."""
        self.log.vllm(
            "ERROR",
            "core_client.py:564",
            "Engine core proc EngineCore_0 died unexpectedly, shutting down client.",
        )
        self.exit_cleanly(0)

    def exit_cleanly(self, code: int) -> None:
        self.log.uvicorn("Shutting down")
        self.log.uvicorn(f"Finished server process [{os.getpid()}]")
        os._exit(code)

    def start_failing_health(self) -> None:
        self.health_failing = True

    def grow_memory(self) -> None:
        """Allocate 16 MiB after 16 MiB, each page written so that it is really resident."""
        chunks = []
        while True:
            chunk = bytearray(16 * 2**20)
            chunk[:: 2**12] = b"\x01" * (len(chunk) // 2**12)
            chunks.append(chunk)

    def after(self, delay_s: float, action: Callable[..., object], *args: object) -> None:
        """Run `action(*args)` in `delay_s` seconds on a daemon thread."""
        timer = threading.Timer(delay_s, action, args)
        timer.daemon = True
        timer.start()


def fork_engine_core(ignore_sigterm: bool) -> int:
    """Fork a child in our process group that sleeps until a signal to the group kills it."""
    child_pid = os.fork()
    if child_pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_sigterm else signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        while True:
            signal.pause()
    return child_pid


class EngineServer(ThreadingHTTPServer):
    """The HTTP server, holding the engine its handlers answer for."""

    # vLLM's uvicorn listens with a backlog of 2048; socketserver's default of 5 would refuse a
    # burst of concurrent connections.
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        super().__init__((engine.options.host, engine.options.port), EngineHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver would print to sys.stderr, whose fd may be a socket's after --close-log.
        self.engine.log.raw(f"ERROR:    Exception while serving {client_address}")


class EngineHandler(BaseHTTPRequestHandler):
    """vLLM's routes that the orchestrator and its tests use, plus GET /fake/state."""

    protocol_version = "HTTP/1.1"
    server: EngineServer

    def setup(self) -> None:
        super().setup()
        if self.server.engine.options.tcp_nodelay:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # uvicorn's access line, unless vLLM's access-log flags leave this path out.
        options = self.server.engine.options
        path = self.path.split("?", 1)[0]
        if options.disable_uvicorn_access_log or path in self.server.engine.quiet_paths:
            return
        super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:
        # uvicorn's access line: `INFO:     127.0.0.1:40000 - "GET /health HTTP/1.1" 200`
        request_line, status = (args[0], args[1]) if len(args) >= 2 else ("-", format % args)
        client = f"{self.client_address[0]}:{self.client_address[1]}"
        self.server.engine.log.uvicorn(f'{client} - "{request_line}" {status}', sys.stdout)

    def send_json(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def send_openai_error(self, status: int, message: str, error_type: str) -> None:
        error = {"message": message, "type": error_type, "param": None, "code": status}
        self.send_json(status, {"error": error})

    def do_GET(self) -> None:
        engine = self.server.engine
        if self.path.split("?", 1)[0] == "/health":  # FastAPI ignores a query it does not take
            engine.count_request("/health")
            if engine.health_failing:
                self.send_json(503, {"error": "engine unhealthy"})
                return
            engine.mark_health_ok()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": model_cards(engine)})
        elif self.path == "/is_sleeping" and os.environ.get("VLLM_SERVER_DEV_MODE") == "1":
            self.send_json(200, {"is_sleeping": bool(engine.sleeping)})
        elif self.path == "/fake/state":
            self.send_json(200, engine.state())
        else:
            self.send_openai_error(404, "Not Found", "NotFoundError")

    def do_POST(self) -> None:
        engine = self.server.engine
        raw_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            self.change_lora(raw_body)
            return
        if self.path.split("?")[0] in _SLEEP_PATHS:
            self.sleep_mode()
            return
        if self.path not in _GENERATION_PATHS:
            self.send_openai_error(404, "Not Found", "NotFoundError")
            return
        try:
            request = json.loads(raw_body or b"{}")
        except ValueError:
            self.send_openai_error(400, "Invalid JSON body", "BadRequestError")
            return
        model = request.get("model")
        if model not in engine.served_names and model not in engine.lora_modules:
            self.send_openai_error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        engine.count_request(self.path)
        if self.path == "/v1/embeddings":
            self.send_json(200, embedding(model, request))
        elif request.get("stream") is True:
            self.stream(model, request)
        else:
            self.send_json(200, _GENERATION_PATHS[self.path](model, request))

    def sleep_mode(self) -> None:
        """vLLM's sleep routes: there only with VLLM_SERVER_DEV_MODE=1, and refused unless the
        engine was started with --enable-sleep-mode."""
        engine = self.server.engine
        if os.environ.get("VLLM_SERVER_DEV_MODE") != "1":
            self.send_openai_error(404, "Not Found", "NotFoundError")
            return
        if not engine.options.enable_sleep_mode:
            self.send_openai_error(500, "Sleep mode is not enabled", "InternalServerError")
            return
        path, _, query = self.path.partition("?")
        engine.count_request(path)
        if path == "/sleep":
            engine.sleeping = ("level=2" in query and 2) or 1
            self.send_json(200, {"status": "sleeping", "level": engine.sleeping})
        elif path == "/wake_up":
            if "tags=weights" not in query:
                engine.sleeping = 0
            self.send_json(200, {"status": "awake" if not engine.sleeping else "sleeping"})
        else:
            self.send_json(200, {"results": [None]})

    def change_lora(self, raw_body: bytes) -> None:
        """vLLM's runtime LoRA routes: there only with VLLM_ALLOW_RUNTIME_LORA_UPDATING, 400 for a
        name already loaded or a rank above --max-lora-rank, 404 for unloading an unknown one."""
        engine = self.server.engine
        if os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() not in ("1", "true"):
            self.send_openai_error(404, "Not Found", "NotFoundError")
            return
        request = json.loads(raw_body or b"{}")
        name = str(request.get("lora_name") or "")
        if self.path == "/v1/unload_lora_adapter":
            if engine.lora_modules.pop(name, None) is None:
                message = f"The lora adapter '{name}' cannot be found."
                self.send_openai_error(404, message, "NotFoundError")
                return
            self.send_text(f"Success: LoRA adapter '{name}' removed successfully.")
            return
        path = str(request.get("lora_path") or "")
        if name in engine.lora_modules:
            message = f"The lora adapter '{name}' has already been loaded."
            self.send_openai_error(400, message, "InvalidUserInput")
            return
        try:
            rank = int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.send_openai_error(400, f"Loading lora {name} failed: {error}", "BadRequestError")
            return
        if rank > engine.options.max_lora_rank:
            message = (
                f"LoRA rank {rank} is greater than max_lora_rank {engine.options.max_lora_rank}."
            )
            self.send_openai_error(400, message, "BadRequestError")
            return
        if engine.options.lora_load_delay_s:
            time.sleep(engine.options.lora_load_delay_s)
        engine.lora_modules[name] = path
        self.send_text(f"Success: LoRA adapter '{name}' added successfully.")

    def send_text(self, text: str) -> None:
        payload = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def stream(self, model: str, request: dict[str, Any]) -> None:
        """Server-sent events, one token per chunk at --token-interval-s, then [DONE]; a client
        that goes away ends the stream (and is counted in /fake/state)."""
        engine = self.server.engine
        chat = self.path == "/v1/chat/completions"
        tokens = max(1, min(int(request.get("max_tokens") or 16), 4096))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        engine.count("streams_active", 1)
        try:
            for index in range(tokens):
                if engine.options.token_interval_s:
                    time.sleep(engine.options.token_interval_s)
                self.write_chunk(f"data: {json.dumps(stream_chunk(model, index, chat))}\n\n")
            self.write_chunk("data: [DONE]\n\n")
            self.write_chunk("")
        except (BrokenPipeError, ConnectionResetError):
            engine.count("streams_aborted", 1)
            self.close_connection = True
        finally:
            engine.count("streams_active", -1)

    def write_chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def model_cards(engine: FakeEngine) -> list[dict[str, Any]]:
    """OpenAI model cards: each served name, then each LoRA with its parent."""
    created = int(time.time())
    card = {"object": "model", "created": created, "owned_by": "vllm", "permission": []}
    cards = [
        {
            **card,
            "id": name,
            "root": engine.model,
            "parent": None,
            "max_model_len": engine.options.max_model_len,
        }
        for name in engine.served_names
    ]
    cards += [
        {**card, "id": name, "root": path, "parent": engine.served_names[0]}
        for name, path in engine.lora_modules.items()
    ]
    return cards


def completion(model: str, request: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped completion whose text has `max_tokens` words."""
    completion_tokens = max(1, min(int(request.get("max_tokens") or 16), 256))
    prompt_tokens = len(str(request.get("prompt", "")).split())
    choice = {
        "index": 0,
        "text": " ok" * completion_tokens,
        "logprobs": None,
        "finish_reason": "length",
        "stop_reason": None,
    }
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return {
        "id": "cmpl-" + os.urandom(16).hex(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def chat_completion(model: str, request: dict[str, Any]) -> dict[str, Any]:
    text = completion(model, request)
    choice = text["choices"][0]
    message = {"role": "assistant", "content": choice["text"]}
    return {
        **text,
        "id": "chatcmpl-" + os.urandom(16).hex(),
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": choice["finish_reason"]}],
    }


def embedding(model: str, request: dict[str, Any]) -> dict[str, Any]:
    inputs = request.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = [
        {"object": "embedding", "index": index, "embedding": [0.25, -0.5, float(len(str(item)))]}
        for index, item in enumerate(items)
    ]
    usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
    return {"object": "list", "model": model, "data": data, "usage": usage}


def stream_chunk(model: str, index: int, chat: bool) -> dict[str, Any]:
    """One streamed token, as vLLM's OpenAI server sends it."""
    created = int(time.time())
    if chat:
        delta = {"role": "assistant", "content": " ok"} if index == 0 else {"content": " ok"}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
    choice = {"index": 0, "text": " ok", "logprobs": None, "finish_reason": None}
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }


_SLEEP_PATHS = ("/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache")
_GENERATION_PATHS = {
    "/v1/completions": completion,
    "/v1/chat/completions": chat_completion,
    "/v1/embeddings": embedding,
}


def install_signal_handlers(engine: FakeEngine) -> None:
    def on_signal(signum: int, frame: object) -> None:
        # A group SIGTERM often arrives twice (from the launcher and a wrapper such as `timeout`):
        # a second handler nested inside the first must not run.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        engine.exit_cleanly(0)

    term_handler = signal.SIG_IGN if engine.options.ignore_sigterm else on_signal
    signal.signal(signal.SIGTERM, term_handler)
    signal.signal(signal.SIGINT, on_signal)


def start(engine: FakeEngine) -> None:
    """Everything before listening: the start-up failures, then the loading delay."""
    options = engine.options
    log = engine.log
    log.vllm("INFO", "__init__.py:239", "Automatically detected platform cuda.")
    log.vllm("INFO", "api_server.py:1043", "vLLM API server version 0.8.5 (fake engine)")
    log.vllm("INFO", "api_server.py:1044", f"args: {engine.argv}")
    log.vllm(
        "INFO",
        "api_server.py:1090",
        f"Starting vLLM API server on http://{options.host}:{options.port}",
    )
    if options.fork_child:
        engine.child_pid = fork_engine_core(options.ignore_sigterm)
    log.vllm(
        "INFO", "core.py:58", f"Initializing a V1 LLM engine with config: model={engine.model!r}"
    )
    if options.exit_during_start is not None:
        log.vllm("ERROR", "core.py:515", "EngineCore failed to start.")
        log.raw("RuntimeError: Engine core initialization failed. See root cause above.")
        os._exit(options.exit_during_start)
    if options.oom_during_start and engine.failure_kind:
        time.sleep(options.oom_after_s or 0.0)
        engine.fail(engine.failure_kind, during_start=True)
    time.sleep(options.ready_delay_s)


def tick_alive(path: str) -> None:
    line = {
        "pid": os.getpid(),
        "model": os.environ.get("GPU_ORCH_MODEL_ID", "?"),
        "node": os.environ.get("GPU_ORCH_NODE", "?"),
    }
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        os.write(fd, (json.dumps({**line, "t": time.time()}) + "\n").encode())
        time.sleep(0.05)


def serve(engine: FakeEngine) -> None:
    """Bind, announce readiness, arm the after-ready timers, then serve until killed."""
    options = engine.options
    try:
        server = EngineServer(engine)
    except OSError as error:
        engine.log.raw(f"OSError: [Errno {error.errno}] {error.strerror}")
        os._exit(1)
    engine.listening_at = time.time()
    engine.log.uvicorn(f"Started server process [{os.getpid()}]")
    engine.log.uvicorn("Waiting for application startup.")
    engine.log.uvicorn("Application startup complete.")
    engine.log.uvicorn(
        f"Uvicorn running on http://{options.host}:{options.port} (Press CTRL+C to quit)"
    )
    engine.record()
    if options.alive_log is not None:
        threading.Thread(target=tick_alive, args=(options.alive_log,), daemon=True).start()
    if options.close_log:
        engine.log.close_fds()
    if engine.failure_kind and not options.oom_during_start:
        engine.after(options.oom_after_s or 0.0, engine.fail, engine.failure_kind, False)
    if options.health_fail_after_s is not None:
        engine.after(options.health_fail_after_s, engine.start_failing_health)
    if options.exit_after_s is not None:
        engine.after(options.exit_after_s, engine.engine_core_died)
    if options.grow_memory_after_s is not None:
        engine.after(options.grow_memory_after_s, engine.grow_memory)
    server.serve_forever()


def main(argv: list[str]) -> None:
    """Run the fake engine with `argv` (without the program name)."""
    effective_argv = shlex.split(os.environ.get("FAKE_ENGINE_ARGS", "")) + argv
    options, _ignored_vllm_flags = build_parser().parse_known_args(effective_argv)
    engine = FakeEngine(options, effective_argv)
    install_signal_handlers(engine)
    start(engine)
    serve(engine)


if __name__ == "__main__":
    main(sys.argv[1:])
