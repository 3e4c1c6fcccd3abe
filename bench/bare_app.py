"""`python -m bench.bare_app --port P --model-json FILE --list-json FILE`: the API cost baseline.

A bare FastAPI app whose GET /models/{id} and GET /models return the documents the orchestrator
returned for the same requests (read once from files), served by uvicorn exactly as
`gpu-orchestrator serve` serves the orchestrator: one worker, same host, same log level. What the
orchestrator costs beyond this is its own work: lookups, schemas, middleware, metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException


def create_bare_app(model: dict[str, Any], models: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI(title="bare baseline")

    @app.get("/models")
    async def list_models() -> list[dict[str, Any]]:
        return models

    @app.get("/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != model["id"]:
            raise HTTPException(status_code=404)
        return model

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-json", type=Path, required=True)
    parser.add_argument("--list-json", type=Path, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    app = create_bare_app(
        json.loads(args.model_json.read_text()), json.loads(args.list_json.read_text())
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
