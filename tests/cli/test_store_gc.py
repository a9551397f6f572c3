"""gc and leases: a running stage's inputs survive gc; dead leases expire; gc cleans links, corrupt
objects and abandoned checkpoints, listing everything first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from kdcli.store import Store
from kdcli.store import locks as locks_module

REPO = Path(__file__).resolve().parents[2]
HOLD_LEASE = textwrap.dedent("""
    import sys
    from kdcli.store import Store
    with Store(sys.argv[1]).lease([sys.argv[2]], checkpoints=[sys.argv[3]]):
        print("held", flush=True)
        sys.stdin.read()
""")


def put(store: Store, value: float, parents=None) -> str:
    return store.put("model", {"w": torch.full((2,), value)}, {"stage": "test", "parents": parents or {}}).id


def leaseholder(store: Store, artifact_id: str, key: str = "k" * 64) -> subprocess.Popen:
    """A second process holding a lease on `artifact_id` (and checkpoint `key`) until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(store.root), artifact_id, key], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_gc_spares_what_a_running_process_leases(store):
    teacher = put(store, 1.0)
    leased = put(store, 2.0, parents={"teacher": teacher})  # unreferenced, like a teacher retrained with --force
    orphan = put(store, 3.0)
    proc = leaseholder(store, leased)
    try:
        assert sorted(store.gc()) == [orphan]
        assert set(store.ids()) == {teacher, leased}  # the leased object and what it derives from
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert list((store.root / "leases").iterdir()) == []  # released on exit
    assert sorted(store.gc()) == sorted([teacher, leased]) and store.ids() == []


def test_lease_of_a_killed_process_expires(store):
    leased = put(store, 1.0)
    proc = leaseholder(store, leased)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (lease_file,) = (store.root / "leases").iterdir()  # left behind by the kill
    plan = store.gc_plan()
    assert plan.unreferenced == [leased] and plan.files == [(lease_file, "expired lease")]
    store.apply_gc(plan)
    assert store.ids() == [] and not lease_file.exists()


def test_lease_from_another_host_expires_by_heartbeat(store):
    leased = put(store, 1.0)
    lease = store.root / "leases" / "elsewhere.json"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"pid": 1, "host": "another-host", "start": None, "token": "t", "ids": [leased],
                                 "checkpoints": []}))
    assert store.gc(dry_run=True) == []  # fresh heartbeat: held
    stale = time.time() - locks_module.STALE_AFTER_S - 5
    os.utime(lease, (stale, stale))
    assert store.gc() == [leased] and not lease.exists()


def test_a_lease_in_this_process_holds_and_ends_with_the_block(store):
    leased = put(store, 1.0)
    with store.lease([leased]):
        assert store.gc() == [] and store.gc_plan().leased == [leased]
    assert store.gc() == [leased]


def test_gc_removes_corrupt_objects_and_links_to_missing_ones(store):
    kept = put(store, 1.0)
    broken = put(store, 2.0)
    store.set_ref("good", kept)
    store.set_ref("broken", broken)
    store.add_tag("t", broken)
    store.record_run("r" * 64, "test", broken)
    store.object_path(broken).write_bytes(b"rotten")
    store.set_ref("gone", "f" * 64)
    plan = store.gc_plan()
    assert plan.corrupt == [broken] and plan.unreferenced == []
    assert sorted(plan.refs) == [("broken", broken), ("gone", "f" * 64)]
    assert plan.tags == [("t", broken)] and plan.runs == [("r" * 64, broken)]
    store.apply_gc(plan)
    assert store.ids() == [kept] and store.refs() == {"good": kept}
    assert store.tags() == {"t": []} and store.runs() == []
    assert store.check() == []


def test_gc_checkpoints_finished_abandoned_and_in_use(store):
    done = put(store, 1.0)
    store.record_run("a" * 64, "test", done)
    folder = store.root / "checkpoints"
    folder.mkdir()
    finished, old, young, leased, running = (folder / f"{c * 64}.pt" for c in "abcde")
    for path in (finished, old, young, leased, running):
        path.write_bytes(b"state")
    ten_days = time.time() - 10 * 86400
    for path in (old, leased, running):
        os.utime(path, (ten_days, ten_days))
    with store.lease(checkpoints=[leased.stem]), store.lock(f"stage-{running.stem}"):
        assert [p for p, _ in store.gc_plan().checkpoints] == [finished]
        assert [p for p, _ in store.gc_plan(keep_checkpoints_days=7).checkpoints] == [finished, old]
        assert [p for p, _ in store.gc_plan(all_checkpoints=True).checkpoints] == [finished, old, young]
        store.gc(keep_checkpoints_days=7)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (young, leased, running))


def test_gc_cli_lists_first_and_dry_run_removes_nothing(cli, store):
    orphan = put(store, 1.0)
    store.set_ref("dangling", "e" * 64)
    dry = cli("artifacts", "gc", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.splitlines() == [f"object {orphan} (nothing refers to it)",
                                       f"ref dangling (points to missing {'e' * 12})"]
    assert "would remove 2 item(s), 1 of them objects" in dry.stderr and store.ids() == [orphan]
    real = cli("artifacts", "gc")
    assert real.stdout == dry.stdout and "removed 2 item(s)" in real.stderr
    assert store.ids() == [] and store.refs() == {}
    bad = cli("artifacts", "gc", "--keep-checkpoints", "-1")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1
