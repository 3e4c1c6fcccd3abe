"""gpu-orchestrator's benchmarks: `python -m bench` (full) or `python -m bench --quick` (CI).

Each section measures the orchestrator beside a baseline in the same run and reports ratios;
see docs/benchmarks.md for what each one measures and how.
"""
