"""The engine's argv and env, built from a spec: pure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.orchestrator.engine_command import build_engine_command
from app.orchestrator.lora import Adapter, AdapterError, max_lora_rank_of, read_adapter
from app.orchestrator.spec import ModelSpec


def _command(
    spec: ModelSpec, adapters: tuple[Adapter, ...] = ()
) -> tuple[list[str], dict[str, str]]:
    command = build_engine_command(
        spec,
        base_command=["vllm", "serve"],
        model_path="/store/model",
        host="127.0.0.1",
        port=8123,
        adapters=adapters,
        parent_env={
            "PATH": "/usr/bin",
            "GPU_ORCH_API_TOKEN": "secret",
            "HOME": "/root",
            "LD_LIBRARY_PATH": "/usr/local/nvidia/lib64",
        },
        engine_env={"HF_HUB_OFFLINE": "1"},
        gpu_ids=(1, 3),
        launch_token="tok",
    )
    return command.argv, command.env


def test_engine_command_argv_order_and_owned_flags() -> None:
    spec = ModelSpec(
        id="m",
        model="x",
        dtype="bfloat16",
        gpu_memory_util=0.75,
        max_model_len=4096,
        tensor_parallel_size=2,
        extra_args=["--enforce-eager"],
    )
    argv, _env = _command(spec)
    assert argv == [
        "vllm",
        "serve",
        "/store/model",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--served-model-name",
        "m",
        "--dtype",
        "bfloat16",
        "--gpu-memory-utilization",
        "0.75",
        "--max-model-len",
        "4096",
        "--tensor-parallel-size",
        "2",
        "--disable-access-log-for-endpoints",
        "/health",
        "--enforce-eager",
    ]


def test_engine_command_env_is_clean_base_plus_spec_and_owned() -> None:
    spec = ModelSpec(id="m", model="x", env={"VLLM_LOGGING_LEVEL": "DEBUG"})
    adapters = (Adapter("a", Path("/s/a"), 8), Adapter("b", Path("/s/b"), 64))
    argv, env = _command(spec, adapters)
    assert "GPU_ORCH_API_TOKEN" not in env  # the orchestrator's secrets never reach engines
    assert env["PATH"] == "/usr/bin" and env["HF_HUB_OFFLINE"] == "1"
    assert env["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"  # the operator's, for CUDA
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env["VLLM_ADAPTER_PATHS"] == "/s/a:/s/b"
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["GPU_ORCH_LAUNCH_TOKEN"] == "tok"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"  # adapters change live
    lora = argv[argv.index("--enable-lora") :]
    assert lora == [
        "--enable-lora",
        "--lora-modules",
        "a=/s/a",
        "b=/s/b",
        "--max-lora-rank",
        "64",
        "--max-loras",
        "4",  # room for adapters added while it runs
    ]


def test_engine_command_lora_limits_from_the_spec_or_fitted() -> None:
    wide = (Adapter("w", Path("/s/w"), 128),)
    argv, _env = _command(ModelSpec(id="m", model="x"), wide)
    assert argv[argv.index("--max-lora-rank") + 1] == "128"  # fits the widest declared
    spec = ModelSpec(id="m", model="x", max_loras=8, max_lora_rank=256)
    argv, env = _command(spec, ())
    assert "--lora-modules" not in argv  # LoRA on, no adapter yet: they come at runtime
    assert argv[argv.index("--max-loras") + 1] == "8"
    assert argv[argv.index("--max-lora-rank") + 1] == "256"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    _argv, plain = _command(ModelSpec(id="m", model="x"), ())
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in plain
    with pytest.raises(AdapterError, match="exceeds max_lora_rank 16"):
        _command(ModelSpec(id="m", model="x", max_lora_rank=16), wide)


def test_engine_command_no_adapters_no_lora_flags() -> None:
    argv, env = _command(ModelSpec(id="m", model="x"))
    assert "--enable-lora" not in argv and env["VLLM_ADAPTER_PATHS"] == ""


@pytest.mark.parametrize(("ranks", "expected"), [([1], 1), ([8], 8), ([9], 16), ([300], 320)])
def test_lora_rank_rounds_up_to_vllm_choice(ranks: list[int], expected: int) -> None:
    adapters = [Adapter(f"a{i}", Path("/x"), rank) for i, rank in enumerate(ranks)]
    assert max_lora_rank_of(adapters) == expected


def test_lora_rank_above_vllm_maximum_is_an_error() -> None:
    with pytest.raises(AdapterError, match="exceeds"):
        max_lora_rank_of([Adapter("a", Path("/x"), 1024)])


def test_lora_read_adapter_needs_config_with_rank(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="not found"):
        read_adapter("a", tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 0}))
    with pytest.raises(AdapterError, match="positive integer"):
        read_adapter("a", tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16}))
    assert read_adapter("a", tmp_path).rank == 16
