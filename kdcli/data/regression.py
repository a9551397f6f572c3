"""Tabular data sets: seed 001's synthetic function, scikit-learn's diabetes, a user's CSV.

Every loader returns a `DataSet` with task="regression", num_outputs=1 (a CSV may instead be a
classification task, see `load_csv`), x as already standardized
float32 features (N, F) and y as float32 targets (N,). Features are standardized with the
statistics of the training pool only (the test rows never inform them), so `scale=1.0` and
`mean=std=()`: `DataSet.prepare` leaves the features as stored.

The pool is split into train/validation by `split_pool(spec.val_fraction, spec.split_seed)`; the
validation part is what kdcli selects models on. The test set is fixed per data set and only
reported.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from kdcli.data.base import DATASETS, DataSet, DataSpec, split_pool
from kdcli.errors import UsageError

# Seed 001's data generator and split.
SYNTHETIC_N_SAMPLES = 2000
SYNTHETIC_N_FEATURES = 10
SYNTHETIC_NOISE = 0.1
SYNTHETIC_DATA_SEED = 42  # np.random.seed(42) before drawing X, then the noise
SYNTHETIC_TEST_FRACTION = 0.2
SYNTHETIC_SPLIT_STATE = 42  # train_test_split(..., random_state=42)
SYNTHETIC_MIN_FEATURES = 6  # the function reads features 0..5; the rest are pure distractors

# diabetes and CSV: fixed 20% test split, random_state 0.
TABLE_TEST_FRACTION = 0.2
TABLE_SPLIT_STATE = 0


def synthetic_target(X: np.ndarray) -> np.ndarray:
    """Seed 001's noise-free target for features X (N, F >= 6), as float64 (N,).

        sin(x0 * x1) + 0.5 cos(pi x2) + tanh(x3) + 0.2 x4^2 - 1.5 exp(-x0^2) + 0.1 [x5 > 0]

    An interaction, a periodic term, a saturation, a quadratic, a Gaussian bump and a step of
    0.1; features 6 and beyond do not enter it.
    """
    X = np.asarray(X, dtype=np.float64)
    return (np.sin(X[:, 0] * X[:, 1])
            + 0.5 * np.cos(X[:, 2] * np.pi)
            + np.tanh(X[:, 3])
            + 0.2 * X[:, 4] ** 2
            - 1.5 * np.exp(-X[:, 0] ** 2)
            + 0.1 * (X[:, 5] > 0).astype(np.float64))


def generate_synthetic(n_samples: int = SYNTHETIC_N_SAMPLES, n_features: int = SYNTHETIC_N_FEATURES,
                       noise: float = SYNTHETIC_NOISE) -> tuple[np.ndarray, np.ndarray]:
    """Raw (unstandardized) seed 001 data: X float32 (N, F) uniform in [-2, 2], y float32 (N,).

    Draws exactly what seed 001 draws after np.random.seed(42): X first, then the Gaussian noise
    of standard deviation `noise`; y is computed from the float64 X before X is cast to float32.
    """
    rng = np.random.RandomState(SYNTHETIC_DATA_SEED)
    X = rng.uniform(-2, 2, (n_samples, n_features))
    y = synthetic_target(X)
    y = y + rng.normal(0, noise, y.shape)
    return X.astype(np.float32), y.astype(np.float32)


def _standardize(pool: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler fitted on `pool` only, applied to both; float32 out."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(pool)
    return (scaler.transform(pool).astype(np.float32), scaler.transform(test).astype(np.float32))


def _make(name: str, spec: DataSpec, pool_x, pool_y, test_x, test_y) -> DataSet:
    train_idx, val_idx = split_pool(len(pool_y), spec.val_fraction, spec.split_seed)
    return DataSet(
        name=name, task="regression",
        x_pool=torch.from_numpy(np.ascontiguousarray(pool_x, dtype=np.float32)),
        y_pool=torch.from_numpy(np.ascontiguousarray(pool_y, dtype=np.float32).reshape(-1)),
        train_idx=train_idx, val_idx=val_idx,
        x_test=torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32)),
        y_test=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.float32).reshape(-1)),
        num_outputs=1, scale=1.0, mean=(), std=(),
    )


def _extra(spec: DataSpec, key: str, default, kind, minimum):
    value = spec.extra.get(key)
    if value is None:
        return default
    try:
        number = kind(value)
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"--{key.replace('_', '-')} expects {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}") from None
    if number < minimum:
        raise UsageError(f"--{key.replace('_', '-')} must be at least {minimum}, got {value!r}")
    return number


@DATASETS.register("synthetic-regression")
def load_synthetic_regression(spec: DataSpec) -> DataSet:
    """Seed 001's synthetic regression task: 2000 x 10 features, noise 0.1, 1600 pool / 400 test.

    Generation, 80/20 split (train_test_split random_state 42) and feature standardization with the
    80% part's statistics reproduce seed 001 exactly; targets stay on their raw scale, as there.
    spec.extra may set n_samples, n_features (>= 6) and noise; None keeps the seed's values.

    Seed 001 trained on the whole 80% and had no validation split. kdcli splits the 80% pool into
    train/validation (spec.val_fraction, spec.split_seed) and selects models on the validation part,
    never on the test set.
    """
    n_samples = _extra(spec, "n_samples", SYNTHETIC_N_SAMPLES, int, 10)
    n_features = _extra(spec, "n_features", SYNTHETIC_N_FEATURES, int, SYNTHETIC_MIN_FEATURES)
    noise = _extra(spec, "noise", SYNTHETIC_NOISE, float, 0.0)
    from sklearn.model_selection import train_test_split

    X, y = generate_synthetic(n_samples, n_features, noise)
    pool_x, test_x, pool_y, test_y = train_test_split(
        X, y, test_size=SYNTHETIC_TEST_FRACTION, random_state=SYNTHETIC_SPLIT_STATE)
    pool_x, test_x = _standardize(pool_x, test_x)
    return _make("synthetic-regression", spec, pool_x, pool_y, test_x, test_y)


@DATASETS.register("diabetes")
def load_diabetes(spec: DataSpec) -> DataSet:
    """scikit-learn's bundled diabetes data: 442 patients x 10 features, disease progression target.

    A fixed 20% test split (random_state 0) is held out (353 pool / 89 test). Features are
    standardized with the pool's statistics; the target is standardized with the pool's mean and
    standard deviation too (raw values run 25..346), so reported MSEs are in units of the pool's
    target variance: an MSE of 1.0 is what predicting the pool mean scores.
    """
    from sklearn.datasets import load_diabetes as sk_load_diabetes
    from sklearn.model_selection import train_test_split

    bunch = sk_load_diabetes()
    pool_x, test_x, pool_y, test_y = train_test_split(
        bunch.data, bunch.target, test_size=TABLE_TEST_FRACTION, random_state=TABLE_SPLIT_STATE)
    pool_x, test_x = _standardize(pool_x, test_x)
    y_mean, y_std = float(np.mean(pool_y)), float(np.std(pool_y))
    return _make("diabetes", spec, pool_x, (pool_y - y_mean) / y_std, test_x, (test_y - y_mean) / y_std)


_MISSING = {"", "nan", "na", "n/a", "null", "none"}


def read_csv_table(path: str | Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a CSV with a header row -> (X float64 (N, F), y float64 (N,), feature column names).

    Every column other than `target` is a feature. Raises a one-line UsageError for a missing
    file, a missing target column (listing the columns), a row of the wrong length, a non-numeric
    value or an empty/NaN/infinite cell, naming the column and the file line (the header is line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"csv file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise UsageError(f"csv file {path} is not UTF-8 text") from None
    except csv.Error as exc:
        raise UsageError(f"csv file {path} is not valid CSV: {exc}") from None
    lines = [(number, row) for number, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not lines:
        raise UsageError(f"csv file {path} is empty")
    header = [cell.strip() for cell in lines[0][1]]
    if target not in header:
        raise UsageError(f"csv file {path} has no column {target!r}; columns: {', '.join(header)}")
    if len(header) < 2:
        raise UsageError(f"csv file {path} has no feature columns besides the target {target!r}")
    values = np.empty((len(lines) - 1, len(header)), dtype=np.float64)
    for i, (number, row) in enumerate(lines[1:]):
        if len(row) != len(header):
            raise UsageError(f"csv file {path} line {number}: {len(row)} fields, the header has {len(header)}")
        for j, cell in enumerate(row):
            text = cell.strip()
            if text.lower() in _MISSING:
                raise UsageError(f"csv file {path}: column {header[j]!r} is empty or NaN at line {number}")
            try:
                value = float(text)
            except ValueError:
                raise UsageError(f"csv file {path}: column {header[j]!r} has a non-numeric value {text!r} "
                                 f"at line {number}") from None
            if not math.isfinite(value):
                raise UsageError(f"csv file {path}: column {header[j]!r} is NaN or infinite at line {number}")
            values[i, j] = value
    t = header.index(target)
    features = [name for j, name in enumerate(header) if j != t]
    return np.delete(values, t, axis=1), values[:, t], features


@DATASETS.register("csv")
def load_csv(spec: DataSpec) -> DataSet:
    """A user's table, `csv:PATH`: header row, numeric cells, spec.extra["target"] names the target.

    Every other column is a feature. A fixed 20% test split (random_state 0) is held out and the
    features are standardized with the pool's statistics. spec.extra["task"] is "regression" (the
    default: the target stays on its own scale unless spec.extra["standardize_target"] is true, then
    pool mean/std as for diabetes) or "classification": the target holds integer class labels, mapped
    in sorted order to 0..K-1 (class_names keep the original values), and the test split is stratified.
    """
    path = spec.arg
    if not path:
        raise UsageError("csv data set needs a path: csv:PATH")
    target = spec.extra.get("target")
    if not target:
        raise UsageError(f"csv:{path} needs the name of its target column: --target COLUMN")
    X, y, _ = read_csv_table(path, str(target))
    if len(y) < 10:
        raise UsageError(f"csv file {path} has {len(y)} data rows; at least 10 are needed for a test split")
    if (spec.extra.get("task") or "regression") == "classification":
        return _csv_classification(spec, path, str(target), X, y)
    from sklearn.model_selection import train_test_split

    pool_x, test_x, pool_y, test_y = train_test_split(
        X, y, test_size=TABLE_TEST_FRACTION, random_state=TABLE_SPLIT_STATE)
    pool_x, test_x = _standardize(pool_x, test_x)
    if str(spec.extra.get("standardize_target", False)).lower() in ("true", "1", "yes"):
        y_mean, y_std = float(np.mean(pool_y)), float(np.std(pool_y)) or 1.0
        pool_y, test_y = (pool_y - y_mean) / y_std, (test_y - y_mean) / y_std
    return _make(f"csv:{path}", spec, pool_x, pool_y, test_x, test_y)


def _csv_classification(spec: DataSpec, path: str, target: str, X: np.ndarray, y: np.ndarray) -> DataSet:
    """The table as a classification task: float32 features (N, F), int64 labels 0..K-1 (N,)."""
    from sklearn.model_selection import train_test_split

    fractional = np.flatnonzero(y != np.round(y))
    if fractional.size:
        raise UsageError(f"csv file {path}: --task classification needs integer labels in column {target!r}, "
                         f"got {y[fractional[0]]:g} at line {fractional[0] + 2}")
    values, labels = np.unique(y.astype(np.int64), return_inverse=True)
    if len(values) < 2:
        raise UsageError(f"csv file {path}: column {target!r} holds a single class ({values[0]}); "
                         "classification needs at least 2")
    counts = np.bincount(labels)
    stratify = labels if counts.min() >= 2 else None  # a class seen once cannot be on both sides
    pool_x, test_x, pool_y, test_y = train_test_split(
        X, labels, test_size=TABLE_TEST_FRACTION, random_state=TABLE_SPLIT_STATE, stratify=stratify)
    pool_x, test_x = _standardize(pool_x, test_x)
    train_idx, val_idx = split_pool(len(pool_y), spec.val_fraction, spec.split_seed)
    return DataSet(
        name=f"csv:{path}", task="classification",
        x_pool=torch.from_numpy(np.ascontiguousarray(pool_x, dtype=np.float32)),
        y_pool=torch.from_numpy(np.ascontiguousarray(pool_y, dtype=np.int64)),
        train_idx=train_idx, val_idx=val_idx,
        x_test=torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32)),
        y_test=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
        num_outputs=len(values), class_names=[str(v) for v in values],
    )
