"""--track: per-epoch metrics, params and the artifact id read back from real TensorBoard event files
(EventAccumulator) and a local MLflow file store (MlflowClient on a file: URI)."""

from __future__ import annotations

import json

import pytest

from kdcli.tracking import MLflowTracker, TensorBoardTracker, parse_tracker


def _events(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(p.parent for p in directory.rglob("events.out.tfevents.*"))
    accumulators = []
    for run in runs:
        accumulator = EventAccumulator(str(run), size_guidance={"tensors": 0})
        accumulator.Reload()
        accumulators.append(accumulator)
    return accumulators


def _text(accumulator, tag: str) -> str:
    return accumulator.Tensors(tag)[0].tensor_proto.string_val[0].decode()


def _mlflow_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kdcli")
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.slow  # the first import of tensorboard and mlflow
def test_training_stage_logs_to_tensorboard_and_mlflow(cli, store, tmp_path):
    uri = f"file:{tmp_path / 'mlruns'}"
    out = json.loads(cli("baseline", "--epochs", "3", "--patience", "0", "--name", "tracked", "--json",
                         "--track", f"tensorboard:{tmp_path / 'tb'}", "--track", f"mlflow:{uri}").stdout)
    history = store.get(out["id"]).manifest["history"]

    (events,) = _events(tmp_path / "tb")
    val_loss = events.Scalars("val_loss")
    assert [e.step for e in val_loss] == [1, 2, 3]
    assert [e.value for e in val_loss] == pytest.approx([h["val_loss"] for h in history])
    assert events.Scalars("final/test_acc")[0].value == pytest.approx(out["metrics"]["test_acc"])
    assert _text(events, "artifact_id/text_summary") == out["id"]
    assert "| epochs | 3 |" in _text(events, "params/text_summary")

    client, (run,) = _mlflow_runs(uri)
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.tags["kdcli.artifact_id"] == out["id"]
    assert run.data.params["epochs"] == "3" and run.data.params["model"] == "digits-student"
    steps = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in steps] == [h["epoch"] for h in history]
    assert [m.value for m in steps] == pytest.approx([h["val_acc"] for h in history])


def test_a_cached_run_replays_its_stored_history(cli, store, tmp_path):
    cli("baseline", "--epochs", "2", "--patience", "0")
    result = cli("baseline", "--epochs", "2", "--patience", "0", "--track", f"tensorboard:{tmp_path}")
    assert "skipped baseline" in result.stderr
    (events,) = _events(tmp_path)
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2]


def test_sweep_tracks_one_run_per_point_and_seed(cli, store, tmp_path):
    uri = f"file:{tmp_path / 'mlruns'}"
    result = cli("sweep", "--stage", "baseline", "--grid", "lr=0.003,0.01", "--seeds", "0", "--set", "epochs=1",
                 "--name", "sw", "--track", f"mlflow:{uri}")
    assert result.exit_code == 0, result.stderr
    _, runs = _mlflow_runs(uri)
    assert sorted(r.info.run_name for r in runs) == ["sw lr=0.003 seed 0", "sw lr=0.01 seed 0"]
    rows = store.get("sw").manifest["rows"]
    assert sorted(r.data.tags["kdcli.artifact_id"] for r in runs) == sorted(row["id"] for row in rows)


@pytest.mark.parametrize("spec", ["wandb:project", "tensorboard:", "mlflow", "logs/"])
def test_unknown_tracker_is_one_line_exit_2(cli, spec):
    for args in (("baseline", "--epochs", "1"), ("sweep", "--stage", "baseline", "--set", "epochs=1")):
        result = cli(*args, "--track", spec)
        assert result.exit_code == 2 and "unknown tracker" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_parse_tracker_picks_the_backend(tmp_path):
    assert isinstance(parse_tracker(f"tensorboard:{tmp_path}"), TensorBoardTracker)
    tracker = parse_tracker("mlflow:file:./mlruns")
    assert isinstance(tracker, MLflowTracker) and tracker.uri == "file:./mlruns"
