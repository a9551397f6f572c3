"""Run tracking: `--track tensorboard:DIR` and `--track mlflow:URI`, behind one Tracker protocol.

The engine knows nothing of them: it calls `reporter.epoch(entry)` as always, and `TrackingReporter`
(a Reporter) hands each history entry on to the trackers. A run's params are its resolved config, its
artifact id a tag, its test metrics the final figures. A result taken from the cache trained no epochs
here, so its stored history is replayed into the trackers instead (`replay`), as for sweep points.
tensorboard (through torch.utils.tensorboard) and mlflow are imported lazily.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter

SCHEMES = ("tensorboard", "mlflow")
EXPERIMENT = "kdcli"


class Tracker(Protocol):
    """One tracking backend: a run per stage run."""

    def start(self, run_name: str, params: dict) -> None: ...

    def log_epoch(self, entry: dict) -> None: ...

    def finish(self, artifact_id: str | None, metrics: dict, status: str = "FINISHED") -> None: ...


def _numbers(entry: dict) -> dict[str, float]:
    return {k: float(v) for k, v in entry.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


def _flat(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"} as strings (what both backends take as params)."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


class TensorBoardTracker:
    """Event files under DIR/RUN_NAME-TIME: scalars per epoch (step = epoch), params and id as text."""

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.writer = None
        self.step = 0

    def start(self, run_name: str, params: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise KdcliError(f"--track tensorboard: needs tensorboard ({exc}); pip install tensorboard") from None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_name)
        self.writer = SummaryWriter(str(self.directory / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"))
        table = "\n".join(f"| {k} | {v} |" for k, v in sorted(_flat(params).items()))
        self.writer.add_text("params", "| param | value |\n|---|---|\n" + table)

    def log_epoch(self, entry: dict) -> None:
        self.step = int(entry.get("epoch", self.step + 1))
        for key, value in _numbers(entry).items():
            self.writer.add_scalar(key, value, self.step)

    def finish(self, artifact_id: str | None, metrics: dict, status: str = "FINISHED") -> None:
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(f"final/{key}", value, self.step)
        self.writer.add_text("artifact_id", artifact_id or f"none ({status.lower()})")
        self.writer.close()


class MLflowTracker:
    """An MLflow run in experiment "kdcli" at URI: params, per-epoch metrics (step = epoch), the id as a tag.

    A file: URI (or a plain path) is MLflow's file store, which MLflow 3 keeps only on request
    (MLFLOW_ALLOW_FILE_STORE); asking for it by URI is that request."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = self.run_id = None
        self.step = 0

    def start(self, run_name: str, params: dict) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise KdcliError(f"--track mlflow: needs mlflow ({exc}); pip install mlflow-skinny") from None
        if "://" not in self.uri or self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            for key, value in _flat(params).items():
                self.client.log_param(self.run_id, key, value[:6000])
        except Exception as exc:  # MlflowException, an unreachable server
            raise KdcliError(f"--track mlflow:{self.uri}: {str(exc).strip().splitlines()[0]}") from None

    def log_epoch(self, entry: dict) -> None:
        self.step = int(entry.get("epoch", self.step + 1))
        for key, value in _numbers(entry).items():
            self.client.log_metric(self.run_id, key, value, step=self.step)

    def finish(self, artifact_id: str | None, metrics: dict, status: str = "FINISHED") -> None:
        for key, value in _numbers(metrics).items():
            self.client.log_metric(self.run_id, f"final.{key}", value, step=self.step)
        if artifact_id:
            self.client.set_tag(self.run_id, "kdcli.artifact_id", artifact_id)
        self.client.set_terminated(self.run_id, status)


def parse_tracker(spec: str) -> Tracker:
    """'tensorboard:DIR' | 'mlflow:URI' -> an unstarted tracker; anything else is a UsageError."""
    scheme, sep, target = spec.partition(":")
    if not sep or scheme not in SCHEMES or not target.strip():
        raise UsageError(f"unknown tracker {spec!r}: use tensorboard:DIR or mlflow:URI (e.g. mlflow:file:./mlruns)")
    return TensorBoardTracker(target) if scheme == "tensorboard" else MLflowTracker(target)


class TrackingReporter(Reporter):
    """A Reporter that also hands every epoch's history entry to the trackers."""

    def __init__(self, trackers: list[Tracker], quiet: bool = False):
        super().__init__(quiet=quiet)
        self.trackers = trackers
        self.epochs = 0

    def epoch(self, entry: dict, improved: bool, of: int | None = None) -> None:
        super().epoch(entry, improved, of)
        self.epochs += 1
        for tracker in self.trackers:
            tracker.log_epoch(entry)


@contextlib.contextmanager
def tracked_run(reporter: Reporter, run_name: str, params: dict) -> Iterator[list]:
    """Around one stage run: start every tracker of a TrackingReporter, and finish them with the
    artifact put in the yielded list (a failed run is finished as FAILED). Other reporters: no-op."""
    trackers = getattr(reporter, "trackers", [])
    for tracker in trackers:
        tracker.start(run_name, params)
    produced: list = []
    try:
        yield produced
    except BaseException:
        for tracker in trackers:
            with contextlib.suppress(Exception):
                tracker.finish(None, {}, status="FAILED")
        raise
    artifact = produced[0] if produced else None
    manifest = artifact.manifest if artifact is not None else {}
    if getattr(reporter, "epochs", 1) == 0:  # a cached result: its stored history stands in
        for entry in manifest.get("history") or []:
            for tracker in trackers:
                tracker.log_epoch(entry)
    for tracker in trackers:
        tracker.finish(artifact.id if artifact is not None else None, manifest.get("metrics") or {})


def replay(trackers: list[Tracker], artifact, run_name: str) -> None:
    """Log a stored run (config, history, metrics, id) into every tracker as one run."""
    reporter = TrackingReporter(trackers, quiet=True)
    with tracked_run(reporter, run_name, artifact.manifest.get("config") or {}) as produced:
        produced.append(artifact)
