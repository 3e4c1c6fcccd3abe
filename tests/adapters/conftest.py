"""Adapter tests share the gateway tests' helpers (a temp directory of adapters)."""

from tests.gateway.conftest import adapters_root

__all__ = ["adapters_root"]
