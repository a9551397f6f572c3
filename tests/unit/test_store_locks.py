"""Locks for a shared filesystem: O_EXCL lock files with pid/host/start, heartbeat and stale recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kdcli.store import locks as locks_module

REPO = Path(__file__).resolve().parents[2]
HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from kdcli.store import Store
    with Store(sys.argv[1]).lock("stage-x"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def lock_file(store) -> Path:
    return store.root / "locks" / "stage-x.lock"


def plant(path: Path, pid: int, host: str, age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "start": None, "token": "planted"}))
    then = time.time() - age
    os.utime(path, (then, then))


def test_lock_file_holds_a_record_and_is_removed_on_release(store):
    with store.lock("stage-x") as me:
        record = json.loads(lock_file(store).read_text())
        assert (record["pid"], record["host"], record["token"]) == (os.getpid(), locks_module.this_host(), me.token)
        assert record["start"] == locks_module.process_start(os.getpid())
    assert not lock_file(store).exists()


def test_waiter_is_told_once_who_holds_the_lock(store):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.root), "1.5"], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    told = []
    started = time.monotonic()
    with store.lock("stage-x", on_wait=told.append):
        waited = time.monotonic() - started
    holder.wait(timeout=60)
    assert [h.pid for h in told] == [holder.pid] and told[0].describe() == f"pid {holder.pid}"
    assert waited > 0.5


def test_lock_of_a_dead_process_on_this_host_is_taken_over(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant(lock_file(store), dead.pid, locks_module.this_host())
    told = []
    with store.lock("stage-x", on_wait=told.append):
        assert json.loads(lock_file(store).read_text())["pid"] == os.getpid()
    assert told == []


def test_lock_from_another_host_is_broken_only_without_heartbeat(store, monkeypatch):
    plant(lock_file(store), 4242, "another-host", age=locks_module.STALE_AFTER_S + 5)
    with store.lock("stage-x"):  # silent for longer than the bound: its holder is gone
        pass
    plant(lock_file(store), 4242, "another-host")
    assert locks_module.is_live(lock_file(store)).describe() == "pid 4242 on another-host"
    monkeypatch.setattr(locks_module, "STALE_AFTER_S", 0.5)
    told = []
    with store.lock("stage-x", on_wait=told.append):  # fresh: waited on until its heartbeat is stale
        pass
    assert [h.host for h in told] == ["another-host"]


def test_a_held_lock_keeps_its_heartbeat(store, monkeypatch):
    monkeypatch.setattr(locks_module, "HEARTBEAT_S", 0.05)
    with store.lock("stage-x"):
        old = time.time() - 1000
        os.utime(lock_file(store), (old, old))
        time.sleep(0.3)
        assert time.time() - lock_file(store).stat().st_mtime < 5
        assert locks_module.is_live(lock_file(store)) is not None


@pytest.mark.parametrize("content", ["", "{not json"])
def test_an_unreadable_lock_file_is_stale_only_once_old(store, content, monkeypatch):
    lock_file(store).parent.mkdir(parents=True)
    lock_file(store).write_text(content)
    assert locks_module.is_live(lock_file(store)) is not None  # maybe being written right now
    old = time.time() - locks_module.STALE_AFTER_S - 1
    os.utime(lock_file(store), (old, old))
    with store.lock("stage-x"):
        pass
