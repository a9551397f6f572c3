"""`kdcli sweep --executor`: a real local Ray instance and submitit's local executor run the same cached
stages as `--executor local` (same cache keys, same weights, the same ids in a shared store); a sweep
stopped on one executor resumes on another; --push sends runs and sweep to a remote another store
pulls from; a failed point is one line and the others still finish."""

from __future__ import annotations

import json

import pytest
import torch

from kdcli.executors import Finished, RunProgress, Started
from kdcli.reporting import Reporter
from kdcli.store import Store

ray = pytest.importorskip("ray")
pytest.importorskip("submitit")

GRID = ["sweep", "--stage", "baseline", "--set", "epochs=1", "--set", "batch_size=128", "--grid", "lr=0.01,0.03",
        "--seeds", "0", "--device", "cpu", "--json", "-q"]


@pytest.fixture(scope="module")
def ray_session():
    """One Ray instance for the module (start-up takes seconds); the executor joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, make_cli):
    root = tmp_path_factory.mktemp("local") / "store"
    result = make_cli(root)(*GRID)
    assert result.exit_code == 0, result.stderr
    return root, json.loads(result.stdout)


def runs_of(root, out: dict) -> list:
    store = Store(root)
    return [store.get(row["id"]) for row in store.get(out["id"], kind="sweep").manifest["rows"]]


def assert_same_runs(a: list, b: list) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.manifest["cache_key"] == y.manifest["cache_key"]
        assert x.manifest["metrics"]["test_acc"] == y.manifest["metrics"]["test_acc"]
        for name, tensor in x.tensors().items():
            assert torch.equal(tensor, y.tensors()[name]), name


@pytest.mark.slow
def test_ray_runs_the_same_stages_and_resumes_a_local_sweep(ray_session, local_sweep, tmp_path, make_cli):
    local_root, local_out = local_sweep
    # a fresh store: the same cache keys and bit-identical weights as the local runs
    remote = f"file://{tmp_path / 'remote'}"
    fresh = make_cli(tmp_path / "ray")(*GRID, "--executor", "ray", "--cpus-per-run", "1", "--push", remote)
    assert fresh.exit_code == 0, fresh.stderr
    out = json.loads(fresh.stdout)
    assert (out["runs"], out["ran"]) == (2, 2)
    assert_same_runs(runs_of(local_root, local_out), runs_of(tmp_path / "ray", out))
    # every run and the sweep were pushed: another machine pulls the sweep and has its runs
    Store(tmp_path / "laptop").pull(remote, [out["id"]])
    assert [r.id for r in runs_of(tmp_path / "laptop", out)] == [r.id for r in runs_of(tmp_path / "ray", out)]

    # a sweep begun locally (one point) and finished on Ray reuses that run: same id, one run trained
    shared = tmp_path / "shared"
    first = make_cli(shared)(*[a if a != "lr=0.01,0.03" else "lr=0.01" for a in GRID])
    resumed = make_cli(shared)(*GRID, "--executor", "ray")
    assert resumed.exit_code == 0, resumed.stderr
    done = json.loads(resumed.stdout)
    assert done["ran"] == 1
    assert runs_of(shared, done)[0].id == Store(shared).get(json.loads(first.stdout)["id"]).manifest["rows"][0]["id"]
    again = json.loads(make_cli(shared)(*GRID).stdout)  # and back on local: nothing trains, same sweep id
    assert (again["ran"], again["id"]) == (0, done["id"])


@pytest.mark.slow
def test_submitit_local_executor_runs_the_same_stages(local_sweep, tmp_path, make_cli):
    local_root, local_out = local_sweep
    root = tmp_path / "slurm"
    result = make_cli(root)(*GRID, "--executor", "slurm", "--slurm-cluster", "local", "--time-limit", "5")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["runs"], out["ran"]) == (2, 2)
    assert_same_runs(runs_of(local_root, local_out), runs_of(root, out))
    assert list((root / "slurm").glob("*_log.out"))  # submitit's per-job logs, under the store


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_failed_point_is_one_line_and_the_others_finish(executor, ray_session, tmp_path, make_cli):
    root = tmp_path / "store"
    args = ["sweep", "--stage", "baseline", "--set", "epochs=1", "--grid",
            f"dataset=digits,imagefolder:{tmp_path / 'missing'}", "--seeds", "0", "--device", "cpu", "--executor",
            executor]
    result = make_cli(root)(*args)
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert failed == [f"failed: dataset=imagefolder:{tmp_path / 'missing'} seed 0: imagefolder "
                      f"{tmp_path / 'missing'} does not exist or is not a folder"]
    assert "1 of 2 runs failed" in result.stderr.splitlines()[-1]
    store = Store(root)
    assert [store.read_manifest(i)["kind"] for i in store.ids()] == ["model"]  # the digits run, no sweep


def test_progress_counts_done_cached_running_failed_with_job_ids():
    progress = RunProgress(Reporter(quiet=True), 4)
    for event in (Started(0, "101"), Started(1, "102"), Started(2, "103"), Finished(0, {"id": "a", "skipped": False}),
                  Finished(1, {"id": "b", "skipped": True}), Started(3), Finished(3, {"error": "boom"})):
        progress.update(event)
    assert progress.describe() == "done 1, cached 1, running 1 [103], failed 1"


@pytest.mark.parametrize("args, message", [
    (["--executor", "dask"], "--executor must be one of local, ray, slurm"),
    (["--executor", "ray", "--jobs", "2"], "--jobs is for --executor local"),
    (["--executor", "slurm", "--slurm-cluster", "pbs"], "--slurm-cluster must be one of slurm, local"),
    (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be > 0"),
])
def test_bad_executor_options_are_one_line(cli, args, message):
    result = cli("sweep", "--stage", "baseline", *args)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
