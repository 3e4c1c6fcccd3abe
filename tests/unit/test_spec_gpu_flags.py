"""extra_args may not change how many GPUs an engine takes: placement reserves
tensor_parallel_size GPUs, so vLLM's pipeline, data and prefill-context parallel flags are refused
in every spelling vLLM's parser accepts, naming the field to use instead."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.orchestrator.spec import ModelSpec, owned_flag


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--pipeline-parallel-size", "2"], "--pipeline-parallel-size"),
        (["--pipeline-parallel-size=2"], "--pipeline-parallel-size"),
        (["--pipeline_parallel_size=2"], "--pipeline-parallel-size"),  # '_' read as '-'
        (["--pipeline-par", "2"], "--pipeline-parallel-size"),  # argparse's abbreviation
        (["-pp", "2"], "-pp"),
        (["-pp=2"], "-pp"),
        (["-pp2"], "-pp"),
        (["--data-parallel-size", "2"], "--data-parallel-size"),
        (["--data-parallel-size=4"], "--data-parallel-size"),
        (["-dp", "2"], "-dp"),
        (["-dp=2"], "-dp"),
        (["--data-parallel-size-local", "2"], "--data-parallel-size-local"),
        (["--data-parallel-size-local=2"], "--data-parallel-size-local"),
        (["-dpl", "2"], "-dpl"),
        (["-dpl2"], "-dpl"),  # the longest flag that begins the token, not -dp
        (["--data-parallel-rank", "0"], "--data-parallel-rank"),
        (["-dpb", "ray"], "-dpb"),
        (["--prefill-context-parallel-size", "2"], "--prefill-context-parallel-size"),
        (["-pcp", "2"], "-pcp"),
        (["-pc", "2"], "-pcp"),  # a short flag's unique prefix
        (["--enable-elastic-ep"], "--enable-elastic-ep"),
        (["--elastic-ep-max-dp-size=8"], "--elastic-ep-max-dp-size"),
        (["--enforce-eager", "-pp", "2"], "-pp"),  # anywhere in the list
    ],
)
def test_spec_gpu_count_flags_are_refused_pointing_at_tensor_parallel_size(
    args: list[str], flag: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        ModelSpec(id="m", model="x", extra_args=args)
    [error] = refused.value.errors()
    assert error["loc"] == ("extra_args",)
    assert f"must not set {flag} " in error["msg"]
    assert "tensor_parallel_size" in error["msg"]


@pytest.mark.parametrize(
    "args",
    [
        ["--decode-context-parallel-size", "2"],  # runs on the tensor-parallel GPUs
        ["-dcp", "2"],
        ["--enable-expert-parallel"],
        ["-ep"],
        ["--disable-nccl-for-dp-synchronization"],
        ["--seed", "-1"],
        ["--max-num-seqs", "8", "-O3"],
    ],
)
def test_spec_gpu_count_check_keeps_flags_that_add_no_gpu(args: list[str]) -> None:
    assert ModelSpec(id="m", model="x", extra_args=args).extra_args == args


def test_spec_tensor_parallel_abbreviation_is_owned() -> None:
    # `-t` is a unique prefix of vLLM's `-tp`, which the orchestrator sets from the spec.
    assert owned_flag("-t") == "-tp"
    with pytest.raises(ValidationError, match="must not set -tp"):
        ModelSpec(id="m", model="x", extra_args=["-t", "4"])
