"""Prometheus metrics, one registry per app instance (so tests can build many apps).

gpu_orchestrator_vllm_status encodes the observed state: see STATUS_CODES in states.py.

Counters are exposed without their `_created` series: it doubles the series count of every
counter (and histogram) and no dashboard or alert reads it. prometheus_client decides that for
the whole process, at each scrape, so it is switched off here, before any registry is read.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client: untyped
        self.registry = registry or CollectorRegistry()
        self.vllm_restarts_total = Counter(
            "gpu_orchestrator_vllm_restarts",
            "Engine restarts performed by the orchestrator after a failure.",
            ["model"],
            registry=self.registry,
        )
        self.vllm_ooms_total = Counter(
            "gpu_orchestrator_vllm_ooms",
            "Engine runs that failed out of memory (any kind), as classified from their logs.",
            ["model"],
            registry=self.registry,
        )
        self.vllm_status = Gauge(
            "gpu_orchestrator_vllm_status",
            "Observed engine state: 0 stopped, 1 starting, 2 running, 3 degraded, 4 stopping, "
            "5 failed, 6 sleeping.",
            ["model"],
            registry=self.registry,
        )
        self.gpu_memory_total_bytes = Gauge(
            "gpu_orchestrator_gpu_memory_total_bytes",
            "Total memory of a GPU.",
            ["gpu"],
            registry=self.registry,
        )
        self.gpu_memory_free_bytes = Gauge(
            "gpu_orchestrator_gpu_memory_free_bytes",
            "Free memory of a GPU as last sampled.",
            ["gpu"],
            registry=self.registry,
        )
        self.gpu_memory_reserved_bytes = Gauge(
            "gpu_orchestrator_gpu_memory_reserved_bytes",
            "Memory reserved on a GPU by engines still starting.",
            ["gpu"],
            registry=self.registry,
        )
        self.gpu_low_memory_alert = Gauge(
            "gpu_orchestrator_gpu_low_memory_alert",
            "1 while a GPU's free memory has stayed under the threshold, else 0.",
            ["gpu"],
            registry=self.registry,
        )
        self.gateway_requests_total = Counter(
            "gpu_orchestrator_gateway_requests",
            "Requests the gateway answered, by model (the spec id) and HTTP status code.",
            ["model", "code"],
            registry=self.registry,
        )
        self.gateway_in_flight = Gauge(
            "gpu_orchestrator_gateway_in_flight",
            "Requests the gateway is passing to a model's engine right now.",
            ["model"],
            registry=self.registry,
        )
        self.gateway_queue_wait_seconds = Histogram(
            "gpu_orchestrator_gateway_queue_wait_seconds",
            "Time a request waited for its engine (a cold start, a concurrency slot).",
            buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 1, 5, 15, 60, 300, 900),
            registry=self.registry,
        )
        self.gateway_cold_starts_total = Counter(
            "gpu_orchestrator_gateway_cold_starts",
            "Engine starts the gateway asked for on demand.",
            ["model"],
            registry=self.registry,
        )
        self.adapter_loads_total = Counter(
            "gpu_orchestrator_adapter_loads",
            "LoRA adapters loaded into (or unloaded from) running engines, by result.",
            ["model", "result"],
            registry=self.registry,
        )
        self.adapters_loaded = Gauge(
            "gpu_orchestrator_adapters_loaded",
            "LoRA adapters a model's running engine serves.",
            ["model"],
            registry=self.registry,
        )
        self.evictions_total = Counter(
            "gpu_orchestrator_evictions",
            "Engines stopped or put to sleep to free their GPU memory: reason idle (idle unload) "
            "or make_room (a start that lacked room).",
            ["model", "reason"],
            registry=self.registry,
        )
        self.failovers_total = Counter(
            "gpu_orchestrator_failovers",
            "Models this node started because the node that ran them stopped heartbeating.",
            ["model", "from_node"],
            registry=self.registry,
        )
