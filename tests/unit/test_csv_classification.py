"""`csv:PATH --task classification`: an integer target column is a class label; and `kdcli datasets`
lists every data set with a line for users."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdcli.data import DATASET_HELP, DATASETS, DataSpec, load_dataset
from kdcli.errors import UsageError


def _table(path, labels=(3, 7, 9), rows=90, target_of=None):
    rng = np.random.RandomState(0)
    lines = ["a,b,label"]
    for i in range(rows):
        label = labels[i % len(labels)]
        a, b = rng.normal(label, 0.3), rng.normal(-label, 0.3)
        lines.append(f"{a:.4f},{b:.4f},{target_of(i) if target_of else label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_integer_target_is_a_classification_task(tmp_path):
    path = _table(tmp_path / "t.csv")
    data = load_dataset(DataSpec(name=f"csv:{path}", extra={"target": "label", "task": "classification"}))
    assert data.task == "classification" and data.num_outputs == 3 and data.class_names == ["3", "7", "9"]
    assert data.y_pool.dtype.is_floating_point is False and set(data.y_test.tolist()) == {0, 1, 2}
    assert np.bincount(data.y_test.numpy()).tolist() == [6, 6, 6]  # stratified test split
    regression = load_dataset(DataSpec(name=f"csv:{path}", extra={"target": "label"}))
    assert regression.task == "regression" and regression.num_outputs == 1


def test_fractional_or_single_class_targets_are_refused(tmp_path):
    fractional = _table(tmp_path / "f.csv", target_of=lambda i: 0.5 if i == 4 else i % 2)
    with pytest.raises(UsageError, match="needs integer labels in column 'label', got 0.5 at line 6"):
        load_dataset(DataSpec(name=f"csv:{fractional}", extra={"target": "label", "task": "classification"}))
    single = _table(tmp_path / "s.csv", labels=(1,))
    with pytest.raises(UsageError, match="holds a single class"):
        load_dataset(DataSpec(name=f"csv:{single}", extra={"target": "label", "task": "classification"}))


def test_csv_classifier_trains_from_the_cli(cli, store, tmp_path):
    path = _table(tmp_path / "t.csv")
    result = cli("baseline", "--dataset", f"csv:{path}", "--target", "label", "--task", "classification",
                 "--model", "mlp", "--epochs", "3", "--lr", "0.05", "--device", "cpu", "-q", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["test_acc"] > 60 and "test_mse" not in metrics
    bad = cli("baseline", "--dataset", f"csv:{path}", "--target", "label", "--task", "ranking")
    assert bad.exit_code == 2 and "--task must be one of regression, classification" in bad.stderr


def test_datasets_lists_every_data_set_for_users(cli):
    assert sorted(DATASET_HELP) == DATASETS.names()
    lines = cli("datasets").stdout.splitlines()
    assert len(lines) == len(DATASET_HELP)
    assert any(line.startswith("csv:PATH") and "--task classification" in line for line in lines)
    assert not any("(N," in line or "spec." in line for line in lines)  # no internal docstrings
