"""Why an engine ended, as its launcher can tell: systemd's unit result and the kernel's cgroup
OOM-kill counters, parsed from captured output (tests/fixtures/cgroup/), then read from a real
memory cgroup where this machine lets the test make one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import pytest

from app.orchestrator.launchers.base import ExitCause, memory_size
from app.orchestrator.launchers.subprocess_launcher import (
    COUNTER_NOTE,
    KILLS_NOTE,
    ROOT_NOTE,
    MemoryCgroup,
    cgroup_exit_cause,
    cgroup_notes,
    memory_cgroup,
    memory_limit_bytes,
    oom_kill_count,
)
from app.orchestrator.launchers.systemd_launcher import (
    parse_unit_properties,
    unit_exit_cause,
    unit_settled,
)
from tests.fakes import wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroup"
UNIT = "vllm-m.service"


def _fixture(*parts: str) -> str:
    return FIXTURES.joinpath(*parts).read_text()


# -- systemd ---------------------------------------------------------------------------------------
def _unit(name: str) -> dict[str, str]:
    return parse_unit_properties(_fixture("systemd", name))


def test_exit_cause_systemd_oom_kill_names_the_units_memory_max() -> None:
    cause = unit_exit_cause(UNIT, _unit("show_oom_kill"))

    assert cause == ExitCause(
        kind="oom_kill",
        memory_limit="48 GiB",
        evidence="unit vllm-m.service Result=oom-kill, MemoryMax=51539607552",
    )
    assert cause.describe().startswith("killed by the kernel's OOM killer at its memory limit of")


def test_exit_cause_systemd_oom_kill_without_memory_max_blames_the_host() -> None:
    cause = unit_exit_cause(UNIT, _unit("show_oom_kill_no_limit"))

    assert cause is not None and cause.memory_limit is None
    assert "no memory limit of its own: the host ran out of memory" in cause.describe()


@pytest.mark.parametrize("name", ["show_exit_code", "show_exited_deactivating", "show_collected"])
def test_exit_cause_systemd_other_results_are_no_oom(name: str) -> None:
    assert unit_exit_cause(UNIT, _unit(name)) is None


@pytest.mark.parametrize(
    ("name", "settled"),
    [
        ("show_oom_kill", True),
        ("show_oom_kill_deactivating", True),  # the result is known before the unit has stopped
        ("show_exit_code", True),
        ("show_exited_deactivating", False),  # systemd may still find the OOM kill: ask again
        ("show_collected", True),
    ],
)
def test_exit_cause_systemd_waits_only_while_the_result_may_change(
    name: str, settled: bool
) -> None:
    assert unit_settled(_unit(name)) is settled


def test_exit_cause_systemd_properties_are_read_by_name_not_position() -> None:
    shuffled = "LoadState=loaded\nMemoryMax=1073741824\nActiveState=failed\nResult=oom-kill\n"

    cause = unit_exit_cause(UNIT, parse_unit_properties(shuffled))

    assert cause is not None and cause.memory_limit == "1 GiB"


# -- cgroups: where the counter is -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "directory", "version"),
    [
        # Hybrid host: the memory controller is on its v1 hierarchy, not on the empty cgroup2 one.
        (
            "v1_hybrid",
            "/sys/fs/cgroup/memory/process_api/5008400beec7d3988f1754b94279b49c",
            1,
        ),
        (
            "v2_systemd_service",
            "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/labm6.service",
            2,
        ),
        ("v2_docker", "/sys/fs/cgroup", 2),  # its own cgroup namespace: the container is "/"
        (
            "v2_docker_host_ns",
            "/sys/fs/cgroup/docker/d71c9d0cd8161f7e1dd383f9358f4d6f2d6b874c7dedc7cad4630ccae3d9b07b",
            2,
        ),
    ],
)
def test_exit_cause_cgroup_found_from_proc_cgroup_and_mountinfo(
    name: str, directory: str, version: int
) -> None:
    cgroup = memory_cgroup(_fixture(name, "proc_self_cgroup"), _fixture(name, "mountinfo"))

    assert cgroup is not None
    assert (str(cgroup.directory), cgroup.version) == (directory, version)
    expected = "memory.events" if version == 2 else "memory.oom_control"
    assert cgroup.counter.name == expected


def test_exit_cause_cgroup_under_a_mount_of_a_subtree() -> None:
    """A container given only its own cgroup, bind-mounted: mountinfo's root field names it."""
    mountinfo = (
        "486 477 0:30 /docker/abc /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 "
        "cgroup rw\n"
    )

    cgroup = memory_cgroup("0::/docker/abc/engine\n", mountinfo)

    assert cgroup == MemoryCgroup(
        PurePosixPath("/sys/fs/cgroup/engine"), PurePosixPath("/sys/fs/cgroup"), 2
    )
    assert cgroup.limit_files() == [
        PurePosixPath("/sys/fs/cgroup/engine/memory.max"),
        PurePosixPath("/sys/fs/cgroup/memory.max"),
    ]


def test_exit_cause_cgroup_none_without_a_memory_hierarchy() -> None:
    mountinfo = _fixture("v1_hybrid", "mountinfo").replace("rw,memory", "rw,hugetlb")
    cgroup_lines = "\n".join(
        line for line in _fixture("v1_hybrid", "proc_self_cgroup").splitlines() if line != "0::/"
    )

    assert memory_cgroup(cgroup_lines, mountinfo) is None


# -- cgroups: the counters and limits --------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kills"),
    [
        ("v1_hybrid/memory.oom_control.before", 0),
        ("v1_hybrid/memory.oom_control.after", 1),
        ("v2_systemd_service/memory.events.before", 0),
        ("v2_systemd_service/memory.events.after", 1),  # not `oom 1` nor `max 35`
    ],
)
def test_exit_cause_cgroup_oom_kill_counter(name: str, kills: int) -> None:
    assert oom_kill_count(_fixture(*name.split("/"))) == kills


def test_exit_cause_cgroup_counter_absent_on_old_kernels() -> None:
    assert oom_kill_count("oom_kill_disable 0\nunder_oom 0\n") is None


@pytest.mark.parametrize(
    ("name", "limit"),
    [
        ("v1_hybrid/memory.limit_in_bytes", 67108864),
        ("v1_hybrid/memory.limit_in_bytes.unlimited", None),
        ("v2_systemd_service/memory.max", 536870912),
        ("v2_systemd_service/memory.max.unlimited", None),
        ("v2_docker/memory.max", 104857600),
    ],
)
def test_exit_cause_cgroup_memory_limit(name: str, limit: int | None) -> None:
    assert memory_limit_bytes(_fixture(*name.split("/"))) == limit


@pytest.mark.parametrize(
    ("count_bytes", "text"),
    [(51539607552, "48 GiB"), (1610612736, "1.50 GiB"), (67108864, "64 MiB"), (512, "512 bytes")],
)
def test_exit_cause_memory_size_reads_as_an_operator_writes_it(count_bytes: int, text: str) -> None:
    assert memory_size(count_bytes) == text


def _cgroup_tree(tmp_path: Path, version: int) -> tuple[Path, Path]:
    """A copy of a memory cgroup's files (the engine's, and its parent's) from the fixtures."""
    root = tmp_path / "cgroup"
    engine = root / "engine"
    engine.mkdir(parents=True)
    if version == 1:
        counter = engine / "memory.oom_control"
        shutil.copy(FIXTURES / "v1_hybrid" / "memory.oom_control.before", counter)
        shutil.copy(FIXTURES / "v1_hybrid" / "memory.limit_in_bytes", engine)
        limit = FIXTURES / "v1_hybrid" / "memory.limit_in_bytes.unlimited"
        shutil.copy(limit, root / "memory.limit_in_bytes")
    else:
        counter = engine / "memory.events"
        shutil.copy(FIXTURES / "v2_systemd_service" / "memory.events.before", counter)
        shutil.copy(FIXTURES / "v2_systemd_service" / "memory.max.unlimited", engine / "memory.max")
        shutil.copy(FIXTURES / "v2_systemd_service" / "memory.max", root / "memory.max")
    return root, counter


@pytest.mark.parametrize(
    ("version", "after", "limit"),
    [
        (1, "v1_hybrid/memory.oom_control.after", "64 MiB"),  # the engine cgroup's own limit
        (2, "v2_systemd_service/memory.events.after", "512 MiB"),  # its parent's limit
    ],
)
def test_exit_cause_cgroup_counter_grown_since_launch_is_an_oom_kill(
    tmp_path: Path, version: int, after: str, limit: str
) -> None:
    root, counter = _cgroup_tree(tmp_path, version)
    notes = {COUNTER_NOTE: str(counter), KILLS_NOTE: "0", ROOT_NOTE: str(root)}
    assert cgroup_exit_cause(notes) is None  # nothing killed yet

    shutil.copy(FIXTURES.joinpath(*after.split("/")), counter)
    cause = cgroup_exit_cause(notes)

    assert cause is not None and cause.kind == "oom_kill"
    assert cause.memory_limit == limit
    assert f"{counter.name} oom_kill 0 -> 1 in {counter.parent}" == cause.evidence


def test_exit_cause_cgroup_kill_before_launch_is_not_this_runs(tmp_path: Path) -> None:
    _root, counter = _cgroup_tree(tmp_path, 1)
    shutil.copy(FIXTURES / "v1_hybrid" / "memory.oom_control.after", counter)

    assert cgroup_exit_cause({COUNTER_NOTE: str(counter), KILLS_NOTE: "1"}) is None
    assert cgroup_exit_cause({}) is None  # launched where the kernel gives no counter


# -- a real memory cgroup --------------------------------------------------------------------------
@contextmanager
def limited_memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A child of this process's memory cgroup with a memory limit, where the kernel lets a
    test make one (root, a writable v1 memory hierarchy or a delegated v2 one); else skipped.
    Whatever is left in it is killed at the end."""
    own = memory_cgroup(
        Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
    )
    if own is None:
        pytest.skip("no memory cgroup")
    child = Path(own.directory) / f"gpu-orch-test-{os.getpid()}-{time.monotonic_ns()}"
    limit_name = "memory.max" if own.version == 2 else "memory.limit_in_bytes"
    try:
        child.mkdir()
    except OSError as error:
        pytest.skip(f"cannot create a memory cgroup under {own.directory}: {error}")
    procs = child / "cgroup.procs"
    try:
        try:
            (child / limit_name).write_text(str(limit_bytes))
        except OSError as error:
            pytest.skip(f"cannot limit a memory cgroup here: {error}")
        yield child
    finally:
        for pid in procs.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        wait_until(lambda: not procs.read_text().strip(), 10, what="the test cgroup emptied")
        child.rmdir()


@pytest.fixture
def limited_cgroup() -> Iterator[Path]:
    with limited_memory_cgroup(64 * 2**20) as cgroup:
        yield cgroup


def test_exit_cause_cgroup_real_kernel_oom_kill(limited_cgroup: Path) -> None:
    """A process put in a 64 MiB cgroup, its count taken as at launch, then made to allocate
    300 MiB: the kernel kills it and the counter says so, with the limit."""
    script = (
        "import sys; sys.stdin.readline(); b = bytearray(300 * 2**20); "
        "b[::4096] = b'\\x01' * (len(b) // 4096)"
    )
    procs = limited_cgroup / "cgroup.procs"
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        # Joins the cgroup between fork and exec: in it before it allocates anything.
        preexec_fn=lambda: procs.write_text(str(os.getpid())),
    )
    try:
        notes = cgroup_notes(child.pid)
        assert notes[COUNTER_NOTE].startswith(str(limited_cgroup)), notes
        assert notes[KILLS_NOTE] == "0"
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()

    cause = cgroup_exit_cause(notes)

    assert cause is not None and cause.memory_limit == "64 MiB", cause
    assert "oom_kill 0 -> 1" in cause.evidence
