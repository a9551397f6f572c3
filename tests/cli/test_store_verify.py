"""verify (objects, links, sidecars) and --repair, `artifacts ls`, and paths that hold no store."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
from rich.console import Console

from kdcli.cli.artifacts import listing, listing_table
from kdcli.errors import UsageError
from kdcli.store import Store


def put(store: Store, value: float, parents=None, **extra) -> str:
    manifest = {"stage": "train-teacher", "parents": parents or {}, "metrics": {"test_acc": 90.0 + value}, **extra}
    return store.put("model", {"w": torch.full((2,), value)}, manifest).id


def one_line(result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result.stderr


def test_a_clean_store_verifies(cli, store):
    parent = put(store, 1.0)
    store.set_ref("child", put(store, 2.0, parents={"teacher": parent, "data": "d" * 64}))
    store.add_tag("t", parent)
    assert store.check() == []
    assert "all 2 objects verified" in one_line(cli("artifacts", "verify"), 0)


@pytest.mark.parametrize("damage, kind", [
    ("missing-parent", "missing-parent"), ("dangling-ref", "dangling-ref"), ("dangling-tag", "dangling-tag"),
    ("dangling-run", "dangling-run"), ("forged-sidecar", "sidecar"), ("lost-sidecar", "sidecar"),
])
def test_verify_reports_each_problem_and_repair_fixes_the_links(cli, store, damage, kind):
    good = put(store, 1.0)
    store.set_ref("good", good)
    missing = "0" * 64
    if damage == "missing-parent":
        subject = put(store, 2.0, parents={"teacher": missing})
        store.set_ref("child", subject)
    elif damage == "dangling-ref":
        store.set_ref("gone", missing)
        subject = "gone"
    elif damage == "dangling-tag":
        store.add_tag("t", missing)
        subject = f"t/{missing}"
    elif damage == "dangling-run":
        store.record_run("9" * 64, "train-teacher", missing)
        subject = "9" * 64
    else:
        sidecar = store.object_path(good).with_suffix(".json")
        if damage == "lost-sidecar":
            sidecar.unlink()
        else:
            forged = json.loads(sidecar.read_text())
            forged["metrics"]["test_acc"] = 99.9
            sidecar.write_text(json.dumps(forged))
        subject = good
    (problem,) = store.check()
    assert (problem.kind, problem.subject) == (kind, subject)
    err = one_line(cli("artifacts", "verify"), 1)
    assert f"{kind}: {subject}" in err and err.strip().splitlines()[-1].startswith("error: 1 ")

    repaired = cli("artifacts", "verify", "--repair")
    if kind == "missing-parent":  # nothing to repair: the parent is gone
        assert repaired.exit_code == 1 and "repaired" not in repaired.stderr
        return
    assert repaired.exit_code == 0 and "repaired: " in repaired.stderr, repaired.stderr
    assert store.check() == [] and store.resolve("good") == good
    assert store.get(good).manifest["metrics"]["test_acc"] == 91.0
    if damage == "forged-sidecar":
        assert json.loads(store.object_path(good).with_suffix(".json").read_text())["metrics"]["test_acc"] == 91.0


def test_corrupt_object_fails_verify_and_repair_leaves_it(cli, store):
    bad = put(store, 1.0)
    store.object_path(bad).write_bytes(b"rotten")
    err = one_line(cli("artifacts", "verify", "--repair"), 1)
    assert f"corrupt: {bad}" in err and "1 corrupt object(s)" in err


def test_ls_shows_the_verified_manifest_and_marks_a_forged_sidecar(cli, store):
    honest = put(store, 1.0, seed=7)
    other = put(store, 2.0)
    store.set_ref("teachers/best", honest)
    store.add_tag("scratch", honest)
    sidecar = store.object_path(other).with_suffix(".json")
    forged = json.loads(sidecar.read_text())
    forged["metrics"]["test_acc"] = 99.9
    sidecar.write_text(json.dumps(forged))

    result = cli("artifacts", "ls")
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    (best,) = [r for r in rows if "teachers/best" in r]  # one line per artifact on stdout: grep-able
    assert best.split()[:3] == [honest[:8], "model", "7"] and "scratch" in best and "test_acc 91" in best
    (marked,) = [r for r in rows if r.startswith(other[:8])]
    assert marked.startswith(other[:8] + "!") and "test_acc 92" in marked and "99.9" not in result.stdout
    assert "disagrees with the object" in result.stderr
    data = json.loads(cli("artifacts", "ls", "--json").stdout)["artifacts"]
    assert {r["id"]: (r["sidecar_ok"], r["tags"], r["seed"]) for r in data} == {
        honest: (True, ["scratch"], "7"), other: (False, [], "")}


def test_ls_table_fits_80_columns_with_readable_ids(store):
    for value in range(3):
        store.set_ref(f"a-rather-long-name/for-run-{value}", put(store, float(value), seed=value))
    buffer = io.StringIO()
    Console(file=buffer, width=80).print(listing_table(listing(store), 8))
    lines = buffer.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    assert all(any(line.startswith(i[:8]) for line in lines) for i in store.ids())


def test_ls_kind_must_be_known(cli, store):
    err = one_line(cli("artifacts", "ls", "--kind", "bogus"), 2)
    assert err.count("\n") == 1 and "model, logits" in err and "export" in err and "data" in err


def test_paths_without_a_store(cli, tmp_path):
    typo = tmp_path / "typo"
    listed = cli("artifacts", "ls", "--store", typo)
    assert listed.exit_code == 0 and listed.stdout == "" and f"no store at {typo}" in listed.stderr
    assert f"no store at {typo}" in one_line(cli("artifacts", "verify", "--store", typo), 0)  # one meaning: empty
    assert f"no store at {typo}" in one_line(cli("artifacts", "gc", "--store", typo), 0)
    assert not typo.exists()  # looking created nothing
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args in (("artifacts", "ls"), ("artifacts", "verify"), ("artifacts", "gc"), ("baseline", "--epochs", "1")):
        for root in (a_file, a_file / "sub"):
            err = one_line(cli(*args, "--store", root), 2)
            assert err.count("\n") == 1 and "is a file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_store_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="cannot be written"):
            Store(locked / "store")
        assert Store(locked, readonly=True).ids() == []
    finally:
        locked.chmod(0o700)
