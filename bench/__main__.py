"""`python -m bench [--quick] [--only NAME ...] [--out-dir DIR]`: run the benchmarks, print a
table, write bench/results/<UTC timestamp>.json.

A section that fails is recorded as failed (with its error) and the others still run; the exit
status is 1 when a section failed or an engine of this run was left behind, else 0. A missed
goal is reported, never turned into an exit status: speed is not a pass/fail test here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    adapters,
    api_cost,
    cluster,
    detection,
    gateway,
    readiness,
    real_engine,
    scale,
    swap,
)
from bench.harness import sweep_engines
from bench.report import SectionResult, machine_info, render_markdown, render_table, write_json

Runner = Callable[..., SectionResult]
SECTIONS: dict[str, tuple[str, Runner]] = {
    readiness.NAME: (readiness.TITLE, readiness.run),
    real_engine.NAME: (real_engine.TITLE, real_engine.run),
    detection.NAME: (detection.TITLE, detection.run),
    api_cost.NAME: (api_cost.TITLE, api_cost.run),
    scale.NAME: (scale.TITLE, scale.run),
    gateway.NAME: (gateway.TITLE, gateway.run),
    adapters.NAME: (adapters.TITLE, adapters.run),
    swap.NAME: (swap.TITLE, swap.run),
    cluster.NAME: (cluster.TITLE, cluster.run),
}
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="short mode for CI: fewer trials, no vLLM engine"
    )
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the random delays")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    return parser


def run_section(
    name: str, run: Runner, *, work_dir: Path, run_id: str, **options: object
) -> SectionResult:
    title = SECTIONS[name][0]
    started, load_before = time.monotonic(), os.getloadavg()[0]
    print(f"== {name}: {title}", file=sys.stderr, flush=True)
    try:
        result = run(work_dir=work_dir / name, run_id=run_id, **options)
    except Exception as error:  # one broken benchmark must not hide the others' figures
        traceback.print_exc()
        result = SectionResult(
            name=name, title=title, status="failed", reason=f"{type(error).__name__}: {error}"
        )
    result.figures["wall_s"] = round(time.monotonic() - started, 1)
    # Other work on the machine shows up in every figure: keep the load beside them.
    result.figures["loadavg_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    print(f"   {result.status} in {result.figures['wall_s']} s", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_id = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    names = args.only or list(SECTIONS)
    results: list[SectionResult] = []
    with tempfile.TemporaryDirectory(prefix="gpu-orch-bench-") as scratch:
        for name in names:
            results.append(
                run_section(
                    name,
                    SECTIONS[name][1],
                    work_dir=Path(scratch),
                    run_id=run_id,
                    quick=args.quick,
                    seed=args.seed,
                )
            )
    leaked = sweep_engines(run_id)
    document = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": machine_info(),
        "leaked_engine_pids": leaked,
        "sections": {result.name: result.to_json() for result in results},
    }
    out_path = args.out_dir / f"{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_json(out_path, document)
    print(render_table(results))
    if args.markdown:
        print()
        print(render_markdown(results))
    print(f"\nresults: {out_path}")
    if leaked:
        print(f"engines left running and killed: {leaked}", file=sys.stderr)
    failed = [result.name for result in results if result.status == "failed"]
    return 1 if failed or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
