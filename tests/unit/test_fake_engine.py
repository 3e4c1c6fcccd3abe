"""The fake vLLM engine run as a real process: each flag reproduces the state it promises."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.fakes import (
    free_port,
    http_json,
    http_status,
    kill_process_group,
    run_fake_engine,
    wait_until,
)

LORAS = {"sql-lora": "/adapters/sql", "chat-lora": "/adapters/chat"}
CUDA_OOM_LINE = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
    "GPU 0 has a total capacity of 79.19 GiB of which 1.12 GiB is free."
)
KV_CACHE_LINE = (
    "ValueError: To serve at least one request with the models's max seq len (4096), "
    "(2.00 GiB KV cache is needed, which is larger than the available KV cache memory (1.00 GiB)."
)


def ignored_signals(pid: int) -> int:
    """The SigIgn mask of a process, from /proc (bit n-1 set: signal n is ignored)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return int(line.split()[1], 16)


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_fake_engine_health_refused_until_ready_delay_passes() -> None:
    spawned_at = time.time()
    with run_fake_engine("--ready-delay-s", "0.5") as engine:
        engine.wait_log("Starting vLLM API server on http://127.0.0.1:")

        assert http_status(engine.url("/health")) is None  # refused: not listening yet
        engine.wait_ready(timeout_s=10)
        state = engine.state()

        assert state["listening_at"] - spawned_at >= 0.5
        assert state["ready_at"] >= state["listening_at"]
        assert "INFO:     Application startup complete." in engine.log_text()


def test_fake_engine_lists_served_name_and_loras_with_parent() -> None:
    with run_fake_engine(served_model_name="mistral", lora_modules=LORAS) as engine:
        engine.wait_ready()
        status, body = http_json("GET", engine.url("/v1/models"))

    assert status == 200
    parents = {card["id"]: card["parent"] for card in body["data"]}
    assert parents == {"mistral": None, "sql-lora": "mistral", "chat-lora": "mistral"}
    roots = {card["id"]: card["root"] for card in body["data"]}
    assert roots["sql-lora"] == "/adapters/sql"


def test_fake_engine_completes_for_served_and_lora_names_and_404s_unknown() -> None:
    extra_args = ("--trust-remote-code", "--max-num-seqs", "8")  # unknown to the fake: ignored
    with run_fake_engine(
        served_model_name="mistral", lora_modules=LORAS, extra_args=extra_args
    ) as engine:
        engine.wait_ready()
        url = engine.url("/v1/completions")
        lora_status, lora_body = http_json("POST", url, {"model": "sql-lora", "max_tokens": 3})
        base_status, _ = http_json("POST", url, {"model": "mistral", "prompt": "hi"})
        unknown_status, unknown_body = http_json("POST", url, {"model": "other"})

    assert (lora_status, base_status, unknown_status) == (200, 200, 404)
    assert lora_body["model"] == "sql-lora"
    assert lora_body["object"] == "text_completion"
    assert lora_body["usage"]["completion_tokens"] == 3
    assert unknown_body["error"]["code"] == 404
    assert "other" in unknown_body["error"]["message"]


def test_fake_engine_exit_during_start_exits_with_code_before_listening() -> None:
    with run_fake_engine("--exit-during-start", "3") as engine:
        assert engine.wait_exit() == 3
        assert "Application startup complete" not in engine.log_text()


def test_fake_engine_reads_flags_from_env() -> None:
    with run_fake_engine(env={"FAKE_ENGINE_ARGS": "--exit-during-start 7"}) as engine:
        assert engine.wait_exit() == 7


@pytest.mark.parametrize(
    ("kind", "expected_line", "expected_code"),
    [
        ("gpu_oom", CUDA_OOM_LINE, 1),
        ("kv_cache_insufficient", KV_CACHE_LINE, 1),
        ("exit", "RuntimeError: engine core died unexpectedly", 1),
        ("host_oom", "Killed", -signal.SIGKILL),
    ],
)
def test_fake_engine_failure_kind_prints_real_message_after_ready(
    kind: str, expected_line: str, expected_code: int
) -> None:
    with run_fake_engine("--oom-kind", kind, "--oom-after-s", "0.05") as engine:
        assert engine.wait_exit() == expected_code
        log_text = engine.log_text()

    assert "Application startup complete." in log_text
    assert expected_line in log_text


def test_fake_engine_oom_during_start_fails_before_listening() -> None:
    with run_fake_engine("--oom-kind", "gpu_oom", "--oom-during-start") as engine:
        assert engine.wait_exit() == 1
        log_text = engine.log_text()

    assert CUDA_OOM_LINE in log_text
    assert "Traceback (most recent call last):" in log_text
    assert "Application startup complete" not in log_text


def test_fake_engine_sigterm_logs_shutdown_and_exits_0() -> None:
    with run_fake_engine() as engine:
        engine.wait_ready()
        os.killpg(engine.pid, signal.SIGTERM)

        assert engine.wait_exit() == 0
        assert "INFO:     Shutting down" in engine.log_text()


def test_fake_engine_ignore_sigterm_survives_sigterm_and_dies_on_sigkill() -> None:
    with run_fake_engine("--ignore-sigterm") as engine:
        engine.wait_ready()
        assert ignored_signals(engine.pid) & (1 << (signal.SIGTERM - 1))

        os.killpg(engine.pid, signal.SIGTERM)
        # An ignored signal is dropped when sent; a round trip proves it still serves.
        assert http_status(engine.url("/health")) == 200
        assert engine.process.poll() is None

        os.killpg(engine.pid, signal.SIGKILL)
        assert engine.wait_exit() == -signal.SIGKILL


def test_fake_engine_fork_child_stays_in_group_until_the_group_is_killed() -> None:
    with run_fake_engine("--fork-child", "--ignore-sigterm") as engine:
        engine.wait_ready()
        children = psutil.Process(engine.pid).children()
        assert len(children) == 1
        child_pid = children[0].pid
        assert engine.state()["child_pid"] == child_pid
        assert os.getpgid(child_pid) == engine.pid
        assert ignored_signals(child_pid) & (1 << (signal.SIGTERM - 1))

        kill_process_group(engine.pid)
        wait_until(lambda: is_gone(child_pid), timeout_s=10, what="forked child gone")


def test_fake_engine_fork_child_outlives_a_sigterm_to_the_leader_alone() -> None:
    with run_fake_engine("--fork-child") as engine:
        engine.wait_ready()
        child_pid = engine.state()["child_pid"]

        os.kill(engine.pid, signal.SIGTERM)  # the leader only, as a careless stop would do
        assert engine.wait_exit() == 0
        assert not is_gone(child_pid)

        kill_process_group(engine.pid)
        wait_until(lambda: is_gone(child_pid), timeout_s=10, what="forked child gone")


def test_fake_engine_record_writes_argv_and_env_subset(tmp_path: Path) -> None:
    record_path = tmp_path / "state.json"
    env = {
        "VLLM_ADAPTER_PATHS": "/adapters/sql:/adapters/chat",
        "CUDA_VISIBLE_DEVICES": "1",
        "GPU_ORCH_MODEL_ID": "mistral",
        "FAKE_MARKER": "x",
        "UNRELATED_SECRET": "nope",
    }
    with run_fake_engine("--record", str(record_path), lora_modules=LORAS, env=env) as engine:
        engine.wait_ready()

        def record() -> dict[str, object]:
            return dict(json.loads(record_path.read_text())) if record_path.exists() else {}

        wait_until(lambda: record().get("ready_at") is not None, timeout_s=10)
        recorded = record()

    argv = recorded["argv"]
    assert isinstance(argv, list)
    assert argv[argv.index("--max-model-len") + 1] == "4096"
    assert "sql-lora=/adapters/sql" in argv
    recorded_env = recorded["env"]
    assert isinstance(recorded_env, dict)
    # The engine also inherits the test run's own GPU_ORCH_*/FAKE_* variables, if any.
    assert {name: recorded_env.get(name) for name in env if name != "UNRELATED_SECRET"} == {
        name: value for name, value in env.items() if name != "UNRELATED_SECRET"
    }
    assert "UNRELATED_SECRET" not in recorded_env
    assert all(
        name in ("VLLM_ADAPTER_PATHS", "CUDA_VISIBLE_DEVICES")
        or name.startswith(("GPU_ORCH_", "FAKE_"))
        for name in recorded_env
    )
    assert recorded["pid"] == recorded["pgid"] == engine.pid
    assert list(tmp_path.iterdir()) == [record_path]  # the temporary file was renamed away


def test_fake_engine_health_fails_after_delay_while_process_lives() -> None:
    with run_fake_engine("--health-fail-after-s", "0.2") as engine:
        engine.wait_ready()
        wait_until(lambda: http_status(engine.url("/health")) == 503, timeout_s=10)
        assert engine.process.poll() is None


def test_fake_engine_exit_after_delay_exits_0_like_a_dead_engine_core() -> None:
    with run_fake_engine("--exit-after-s", "0.1") as engine:
        engine.wait_ready()
        assert engine.wait_exit() == 0
        assert "died unexpectedly" in engine.log_text()


def test_fake_engine_close_log_keeps_serving_without_writing() -> None:
    with run_fake_engine("--close-log") as engine:
        engine.wait_log("Application startup complete.")
        log_before = engine.log_text()

        engine.wait_ready()
        assert engine.state()["ready_at"] is not None
        assert engine.log_text() == log_before  # access lines would have been written by now


def test_fake_engine_runs_without_site_packages() -> None:
    # -I -S: no site-packages at all, so the fake must start on any bare Python 3.11.
    with run_fake_engine(interpreter=(sys.executable, "-I", "-S")) as engine:
        engine.wait_ready()


def test_free_port_returns_a_bindable_port() -> None:
    port = free_port()
    with run_fake_engine(port=port) as engine:
        engine.wait_ready()
        assert engine.port == port
