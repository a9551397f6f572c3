"""Issue 12, item 1: `kdcli artifacts gc` while a stage runs must not delete that stage's inputs.

The teacher below is reachable from nothing (no ref, tag or run-cache entry), the state the issue
reproduced with a retrained teacher; a distill run started on it holds a lease, so gc spares it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gc_during_a_run_spares_its_inputs(cli, store):
    teacher = cli("train-teacher", "--model", "digits-student", "--epochs", "1", "--device", "cpu", "-q")
    assert teacher.exit_code == 0, teacher.stderr
    teacher_id = teacher.stdout.strip().splitlines()[-1]
    for entry in (store.root / "runs").glob("*.json"):  # now nothing reaches the teacher
        entry.unlink()
    assert teacher_id in store.gc(dry_run=True)

    env = {**os.environ, "KDCLI_STORE": str(store.root), "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen([sys.executable, "-m", "kdcli", "distill", "--teacher", teacher_id, "--epochs", "40",
                            "--patience", "0", "--device", "cpu", "-q"],
                           cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        checkpoints = store.root / "checkpoints"
        while not any(checkpoints.glob("*.pt")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # training is under way once the first epoch's checkpoint is there
        assert run.poll() is None, "the distill run ended before gc could run"
        removed = cli("artifacts", "gc")
        assert removed.exit_code == 0, removed.stderr
        assert store.object_path(teacher_id).is_file(), "gc removed the running stage's teacher"
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    student = store.get(out.strip().splitlines()[-1])
    assert student.manifest["parents"]["teacher"] == teacher_id
    assert store.get(teacher_id).kind == "model"
    assert not store.leases().ids  # the lease ended with the run
