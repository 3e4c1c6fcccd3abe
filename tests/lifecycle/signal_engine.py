"""A stand-in for `vllm serve` that fails when the test says so: SIGUSR1 makes it print vLLM's
CUDA out-of-memory traceback (as the engine core does) and exit 1.

The log-rotation tests need the OOM written after they rotated the log, at a moment they choose;
the fake engine's timers (`--oom-after-s`) cannot promise that order. Started like vLLM (model,
then vLLM's flags, of which it reads --host and --port); standard library only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

_CORE = "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py"
OOM_TRACE = f"""\
ERROR 07-10 08:59:40 [core.py:515] EngineCore hit a fatal error.
Traceback (most recent call last):
  File "{_CORE}", line 701, in run_engine_core
    engine_core.run_busy_loop()
  File "{_CORE}", line 728, in run_busy_loop
    self._process_engine_step()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total \
capacity of 79.19 GiB of which 1.12 GiB is free.
"""


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/health" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        # uvicorn's access line, so probes keep writing to the log as vLLM's do.
        sys.stdout.write(f'INFO:     {self.client_address[0]} - "{self.requestline}" {args[1]}\n')
        sys.stdout.flush()


def _fail(_signum: int, _frame: FrameType | None) -> None:
    sys.stdout.write(OOM_TRACE)
    sys.stdout.flush()
    os._exit(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _vllm_flags = parser.parse_known_args()
    signal.signal(signal.SIGUSR1, _fail)
    server = ThreadingHTTPServer((args.host, args.port), _Health)
    sys.stdout.write(f"INFO 07-10 08:59:12 [api_server.py:1880] serving {args.model}\n")
    sys.stdout.write("INFO:     Application startup complete.\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
