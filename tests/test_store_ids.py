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
