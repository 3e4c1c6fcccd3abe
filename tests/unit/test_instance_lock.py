"""The single-instance lock: exclusive, naming its holder, released by the kernel when the holder
dies (SIGKILL included), never inherited by what the holder spawns, and only for SQLite files."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from app.store.instance_lock import InstanceLock, InstanceLockHeld, lock_path_for

pytestmark = pytest.mark.sqlite_only(reason="the instance lock is a flock beside a SQLite file")

REPO_ROOT = Path(__file__).resolve().parents[2]

# Takes the lock, optionally spawns a long-lived child the way a launcher spawns an engine (here
# even with close_fds=False: the descriptor itself must not cross exec), prints the child's pid
# (0 for none) once the lock is held, then waits.
HOLDER = """
import signal, subprocess, sys
from pathlib import Path
from app.store.instance_lock import InstanceLock
lock = InstanceLock(Path(sys.argv[1]))
lock.acquire()
child_pid = 0
if sys.argv[2] == "spawn":
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.pause()"],
        stdin=subprocess.DEVNULL, close_fds=False, start_new_session=True,
    )
    child_pid = child.pid
print(child_pid, flush=True)
signal.pause()
"""


@dataclass
class Holder:
    process: subprocess.Popen[str]
    child_pid: int

    def kill(self) -> None:
        """SIGKILL, as a crash would: no release, no cleanup code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@contextmanager
def holder_process(lock_path: Path, *, spawn: bool = False) -> Iterator[Holder]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path), "spawn" if spawn else "no"],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        text=True,
    )
    assert process.stdout is not None
    holder = Holder(process, int(process.stdout.readline()))
    try:
        yield holder
    finally:
        if process.poll() is None:
            holder.kill()
        process.stdout.close()
        if holder.child_pid:
            with suppress(psutil.NoSuchProcess):
                child = psutil.Process(holder.child_pid)
                child.kill()
                child.wait(timeout=10)


def refused_holder(lock_path: Path) -> InstanceLockHeld:
    with pytest.raises(InstanceLockHeld) as refused:
        InstanceLock(lock_path).acquire()
    return refused.value


def test_instance_lock_second_holder_is_refused_naming_pid_host_and_since(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gpu-orchestrator.db.lock"
    first = InstanceLock(path)
    first.acquire()
    try:
        error = refused_holder(path)
        assert error.holder.pid == os.getpid()
        assert error.holder.host == socket.gethostname()
        assert error.holder.since is not None
        assert datetime.fromisoformat(error.holder.since).tzinfo is not None
        message = str(error)
        assert f"pid {os.getpid()} on host {socket.gethostname()} since {error.holder.since}" in (
            message
        )
        assert str(tmp_path / "state" / "gpu-orchestrator.db") in message
        recorded = json.loads(path.read_text())
        assert recorded["pid"] == os.getpid() and recorded["host"] == socket.gethostname()
    finally:
        first.release()


def test_instance_lock_release_lets_the_next_one_in(tmp_path: Path) -> None:
    path = tmp_path / "db.lock"
    first = InstanceLock(path)
    first.acquire()
    first.acquire()  # held already: nothing happens
    first.release()
    assert not first.held and path.read_text() == ""  # the file stays, emptied
    second = InstanceLock(path)
    second.acquire()
    assert second.held
    second.release()
    second.release()  # not held: nothing happens


def test_instance_lock_is_released_when_the_holder_is_sigkilled(tmp_path: Path) -> None:
    path = tmp_path / "db.lock"
    with holder_process(path) as holder:
        assert refused_holder(path).holder.pid == holder.process.pid
        holder.kill()
        successor = InstanceLock(path)
        successor.acquire()  # no stale lock: the kernel dropped it with its holder
        successor.release()


def test_instance_lock_is_not_inherited_by_processes_the_holder_spawns(tmp_path: Path) -> None:
    path = tmp_path / "db.lock"
    with holder_process(path, spawn=True) as holder:
        holder.kill()
        assert psutil.Process(holder.child_pid).is_running()  # as an engine outlives its parent
        successor = InstanceLock(path)
        successor.acquire()
        successor.release()


def test_instance_lock_held_by_a_holder_not_yet_recorded_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.lock"
    with path.open("w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        error = refused_holder(path)
    assert error.holder.pid is None
    assert "has not recorded itself yet" in str(error)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///{tmp}/state/gpu-orchestrator.db", "{tmp}/state/gpu-orchestrator.db.lock"),
        ("sqlite+pysqlite:///{tmp}/x.db", "{tmp}/x.db.lock"),
        ("sqlite:///file:{tmp}/u.db?uri=true", "{tmp}/u.db.lock"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite:///file:mem?mode=memory&cache=shared&uri=true", None),
        # Shared by design: nodes own models through leases in the database, not a local file.
        ("postgresql+psycopg://orch:secret@db.internal/orchestrator", None),
    ],
)
def test_instance_lock_path_is_beside_sqlite_files_only(
    tmp_path: Path, url: str, expected: str | None
) -> None:
    tmp = tmp_path.resolve()
    path = lock_path_for(url.format(tmp=tmp))
    assert path == (None if expected is None else Path(expected.format(tmp=tmp)))


def test_instance_lock_path_is_one_for_two_spellings_of_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path.resolve()
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    monkeypatch.chdir(tmp)
    relative = lock_path_for("sqlite:///real/o.db")
    assert relative == lock_path_for(f"sqlite:///{tmp}/link/o.db")
    assert relative == tmp / "real" / "o.db.lock"
