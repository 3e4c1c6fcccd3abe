"""/gpus, /can-start and refused starts through the API, on simulated GPUs and a fake NVML."""

from __future__ import annotations

from collections.abc import Sequence

from app.orchestrator.gpu.probe import GpuSnapshot
from app.orchestrator.wiring import Overrides
from tests.conftest import MakeSettings, running_app
from tests.lifecycle.helpers import wait_state
from tests.lifecycle.test_engine_lifecycle import spec


class UnavailableProbe:
    """What NVML gives on a node whose driver is not loaded."""

    backend = "nvml"

    def snapshot(self) -> GpuSnapshot:
        return GpuSnapshot(
            backend="nvml", available=False, error="NVML: Driver Not Loaded", gpus=()
        )

    def engine_placed(self, model_id: str, gpu_ids: Sequence[int], held_mib: int) -> None:
        pass

    def engine_removed(self, model_id: str) -> None:
        pass


async def test_gpus_simulated_memory_follows_running_engines(make_settings: MakeSettings) -> None:
    async with running_app(make_settings(simulated_gpus=[81920, 40960])) as (_app, client):
        before = (await client.get("/gpus")).json()
        assert before["backend"] == "simulated" and before["status"] == "available"
        assert [gpu["free_mib"] for gpu in before["gpus"]] == [81920, 40960]
        await client.post("/models", json=spec("tiny", gpu_memory_util=0.25))
        dry_run = (await client.get("/models/tiny/can-start")).json()
        assert dry_run["ok"] is True and dry_run["required_mib"] == 20480 + 1024
        assert dry_run["gpu_ids"] == [0]
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "running")
        during = (await client.get("/gpus")).json()["gpus"][0]
        assert during["free_mib"] == 81920 - 20480
        assert during["models"] == [{"model": "tiny", "state": "running"}]
        await client.post("/models/tiny/stop?wait=true")
        after = (await client.get("/gpus")).json()["gpus"][0]
        assert after["free_mib"] == 81920 and after["models"] == []


async def test_gpus_unavailable_nvml_refuses_starts_with_the_error(
    make_settings: MakeSettings,
) -> None:
    overrides = Overrides(gpu_probe=UnavailableProbe())
    async with running_app(make_settings(gpu_backend="nvml"), overrides) as (_app, client):
        gpus = (await client.get("/gpus")).json()
        assert gpus["status"] == "unavailable" and gpus["error"] == "NVML: Driver Not Loaded"
        await client.post("/models", json=spec("tiny"))
        refused = await client.post("/models/tiny/start")
        assert refused.status_code == 409
        assert refused.json()["detail"]["code"] == "gpu_unavailable"
        assert "Driver Not Loaded" in refused.json()["detail"]["message"]
        assert (await client.get("/models/tiny")).json()["status"]["state"] == "stopped"
