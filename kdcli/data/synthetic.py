"""`--dataset synthetic:REF`: the inputs a synthesize run made from a teacher (kdcli.stages.synthesize).

The pool is the synthetic inputs with the teacher's class for each as its label; train and validation
split it by `split_seed` as any pool, so validation (early stopping, the kept epoch) sees synthetic
inputs only. The test set is the real test split of the teacher's data set when it loads here (a
report, never a choice); without it, a fixed held-out fifth of the synthetic set. `DataSet.evaluation`,
which the run's manifest records, says which.
"""

from __future__ import annotations

from kdcli.data.base import DATASETS, DataSet, DataSpec, split_pool
from kdcli.errors import KdcliError, UsageError

HELD_OUT_FRACTION = 0.2  # the synthetic test part when the teacher's real test split is not available
DATA_KEYS = ("n_samples", "n_features", "noise", "target", "image_size", "task")


def _real_test(teacher_data: dict, spec: DataSpec) -> DataSet | None:
    """The teacher's own data set as its config names it, or None when it cannot be loaded here."""
    from kdcli.data import load_dataset  # the registry package imports this module

    extra = {k: teacher_data[k] for k in DATA_KEYS if teacher_data.get(k) is not None}
    try:
        return load_dataset(DataSpec(name=teacher_data["dataset"], data_dir=teacher_data.get("data_dir"),
                                     split_seed=teacher_data.get("split_seed", 0),
                                     val_fraction=teacher_data.get("val_fraction", 0.1), extra=extra, store=spec.store))
    except KdcliError:
        return None


@DATASETS.register("synthetic")
def load_synthetic(spec: DataSpec) -> DataSet:
    """Synthetic inputs of a synthesize artifact: float32 (N, C, H, W) in the teacher's raw value range."""
    from kdcli.store import Store, default_root

    if not spec.arg:
        raise UsageError("--dataset synthetic:REF names a synthesize artifact (its name, id or id prefix)")
    store = spec.store if spec.store is not None else Store(default_root())
    artifact = store.get(spec.arg, kind="data")
    manifest = artifact.manifest
    if manifest.get("stage") != "synthesize":
        raise UsageError(f"data artifact {artifact.id[:12]} is not the output of synthesize")
    x, y = artifact.tensor("x_pool"), artifact.tensor("y_pool")
    real = _real_test(manifest["teacher_data"], spec)
    if real is not None and real.input_shape == tuple(x.shape[1:]):
        x_test, y_test = real.x_test, real.y_test
        evaluation = {"validation": "held-out synthetic inputs", "test": f"real test split of {real.name}"}
    else:
        cut = len(x) - max(1, int(HELD_OUT_FRACTION * len(x)))
        x, x_test, y, y_test = x[:cut], x[cut:], y[:cut], y[cut:]
        evaluation = {"validation": "held-out synthetic inputs", "test": "held-out synthetic inputs (no real data)"}
    norm = manifest["normalization"]
    train_idx, val_idx = split_pool(len(y), spec.val_fraction, spec.split_seed)
    return DataSet(name=f"synthetic:{artifact.id[:12]}", task="classification", x_pool=x, y_pool=y,
                   train_idx=train_idx, val_idx=val_idx, x_test=x_test, y_test=y_test,
                   num_outputs=manifest["num_outputs"], scale=norm["scale"], mean=tuple(norm["mean"]),
                   std=tuple(norm["std"]), class_names=list(manifest["class_names"]), evaluation=evaluation,
                   parents={"synthetic": artifact.id})
