"""Content ids end to end: the same stage and seed in two fresh stores gives the same artifact id."""

from __future__ import annotations

import pytest

from kdcli.store import Store


@pytest.mark.slow
def test_same_stage_and_seed_give_the_same_id_in_two_stores(tmp_path, make_cli):
    args = ("baseline", "--epochs", "1", "--seed", "4", "--device", "cpu")
    ids = []
    for name in ("here", "there"):
        result = make_cli(tmp_path / name)(*args)
        assert result.exit_code == 0, result.stderr
        ids.append(result.stdout.split()[-1])
    assert ids[0] == ids[1]
    here, there = (Store(tmp_path / name).get(ids[0]) for name in ("here", "there"))
    assert here.path.read_bytes() == there.path.read_bytes()
    assert "seconds" in here.manifest["history"][0] and "created" in here.manifest  # from the sidecar


@pytest.mark.slow
def test_a_parent_named_or_given_by_id_gives_the_same_child_id(tmp_path, make_cli):
    children = []
    for name, by_id in (("named", False), ("by-id", True)):
        cli = make_cli(tmp_path / name)
        teacher = cli("train-teacher", "--model", "digits-student", "--epochs", "1", "--name", "t",
                      "--device", "cpu", "-q")
        assert teacher.exit_code == 0, teacher.stderr
        ref = teacher.stdout.split()[-1] if by_id else "t"
        table = cli("cache-logits", ref, "--device", "cpu", "-q")
        assert table.exit_code == 0, table.stderr
        children.append(table.stdout.split()[-1])
        assert Store(tmp_path / name).get(children[-1]).manifest["config"]["teacher"] == ref  # from the sidecar
    assert children[0] == children[1]
