"""Alembic migrations of the gpu-orchestrator store; `upgrade head` runs at start-up."""
