"""A user's NumPy arrays of any shape: `--dataset npz:PATH`, a .npz file or a folder of .npy files.

The arrays are x, y (the training pool), x_test, y_test, and optionally x_val, y_val (then the
validation split is theirs instead of a seeded split of the pool). x may be (N, F) tables, (N, L)
or (N, C, L) sequences, (N, C, H, W) images or any shape (N, ...) a user's model takes; an (N,) x is
read as (N, 1).

- Task: integer y means classification (labels mapped in sorted order to 0..K-1, class_names keep
  the values), float y regression ((N,) or (N, D) targets); spec.extra["task"] says which instead.
- Normalization: per feature (index along dim 1; the statistics run over N and the other dims),
  mean and std from the training split only, applied per batch by `DataSet.prepare` and recorded in
  the data description; spec.extra["normalize"] = "none" keeps the raw values.
- Memory: .npy files and the uncompressed members of a .npz (np.savez) are memory-mapped
  (copy-on-write, never written); batches are read out of the map and the touched pages released
  (kdcli.data.prepared.MappedSamples), so anonymous memory stays flat in the set's size (the clean
  file pages a batch maps show as file-backed RSS until released). A compressed .npz
  (np.savez_compressed) is read into memory. With x_val the pool is x and x_val joined, in memory.
- Fingerprint: the files' bytes (streamed), the split and the normalization.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from kdcli.data.base import DATASETS, DataSet, DataSpec, fingerprint, split_pool
from kdcli.data.prepared import MappedSamples
from kdcli.errors import UsageError
from kdcli.store import sha256_of_file

REQUIRED = ("x", "y", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val")
STATS_CHUNK_BYTES = 8 << 20  # how much of the training split the statistics read at a time
_ZIP_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


def _mapped_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """An uncompressed .npz member as a copy-on-write memory map of the .npz file itself."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(_ZIP_LOCAL_HEADER)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + _ZIP_LOCAL_HEADER + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
    if dtype.hasobject:
        raise UsageError(f"{path}: array {info.filename!r} holds Python objects; kdcli reads numeric arrays only")
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order="F" if fortran else "C")


def read_arrays(path: str) -> tuple[dict[str, np.ndarray], list[Path]]:
    """{name: array} of a .npz or a folder of NAME.npy files (memory-mapped where the file allows), and
    the files read. A missing path or array, or an unreadable file, is a one-line UsageError."""
    root = Path(path).expanduser()
    if not path:
        raise UsageError("npz data set needs a path: npz:FILE.npz or npz:FOLDER (of x.npy, y.npy, ...)")
    wanted = REQUIRED + OPTIONAL
    arrays: dict[str, np.ndarray] = {}
    try:
        if root.is_dir():
            files = [root / f"{name}.npy" for name in wanted if (root / f"{name}.npy").is_file()]
            arrays = {p.stem: np.load(p, mmap_mode="c", allow_pickle=False) for p in files}
        elif root.is_file():
            files = [root]
            with zipfile.ZipFile(root) as archive:
                for info in archive.infolist():
                    name = info.filename.removesuffix(".npy")
                    if name not in wanted:
                        continue
                    if info.compress_type == zipfile.ZIP_STORED:
                        arrays[name] = _mapped_member(root, info)
                    else:
                        with archive.open(info) as member:
                            arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
        else:
            raise UsageError(f"npz data set {path} not found (a .npz file or a folder of .npy files)")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UsageError(f"cannot read npz data set {path}: {exc}") from None
    missing = [name for name in REQUIRED if name not in arrays]
    if missing:
        raise UsageError(f"npz data set {path} lacks {', '.join(missing)} (it needs x, y, x_test, y_test; "
                         f"x_val, y_val optional); found: {', '.join(sorted(arrays)) or 'nothing'}")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise UsageError(f"npz data set {path}: give x_val and y_val together")
    return arrays, files


def _check_pair(path: str, arrays: dict, x_name: str, y_name: str) -> None:
    x, y = arrays[x_name], arrays[y_name]
    if x.ndim < 1 or y.ndim not in (1, 2) or len(x) != len(y):
        raise UsageError(f"npz data set {path}: {x_name} {x.shape} and {y_name} {y.shape} must have the same "
                         f"number of rows N ({y_name} (N,) or (N, D))")
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise UsageError(f"npz data set {path}: {x_name} and {y_name} must be numeric, got {x.dtype} and {y.dtype}")
    if x.shape[1:] != arrays["x"].shape[1:]:
        raise UsageError(f"npz data set {path}: {x_name} has samples of shape {x.shape[1:]}, x has {arrays['x'].shape[1:]}")


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """x (N, ...) as a tensor viewing the same memory; (N,) becomes (N, 1)."""
    if array.dtype.kind == "b" or array.dtype == np.float16 or not array.dtype.isnative:
        array = array.astype(np.float32)
    tensor = torch.from_numpy(array) if array.flags.writeable else torch.from_numpy(np.array(array))
    return tensor.view(-1, 1) if tensor.dim() == 1 else tensor


def _labels(path: str, task: str, ys: list[np.ndarray]) -> tuple[list[torch.Tensor], int, list[str]]:
    """The targets of pool, (val) and test as tensors, with the output count and the class names."""
    if task == "regression":
        out = [torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)) for y in ys]
        return out, 1 if ys[0].ndim == 1 else ys[0].shape[1], []
    for y in ys:
        if y.ndim != 1 or (y.dtype.kind == "f" and not np.array_equal(y, np.round(y))):
            raise UsageError(f"npz data set {path}: classification needs integer labels y (N,); "
                             f"got {y.dtype} {y.shape}{' with fractions' if y.ndim == 1 else ''}")
    values = np.unique(np.asarray(ys[0]).astype(np.int64))
    if len(values) < 2:
        raise UsageError(f"npz data set {path}: y holds a single class ({values[0]}); classification needs 2")
    out = []
    for y in ys:
        y = np.asarray(y).astype(np.int64)
        unseen = np.setdiff1d(y, values)
        if unseen.size:
            raise UsageError(f"npz data set {path}: label {unseen[0]} appears outside the training pool y")
        out.append(torch.from_numpy(np.searchsorted(values, y)))
    return out, len(values), [str(v) for v in values]


def feature_stats(x: torch.Tensor, rows: torch.Tensor, release=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per feature (dim 1) of x[rows], in float64, read in chunks of sorted rows (a
    memory map is read once, never copied whole; `release()` after each chunk drops its pages); a
    constant feature gets std 1 (only shifted)."""
    features = x.shape[1]
    per_row = max(x[0].numel() * x.element_size(), 1)
    chunk = max(1, STATS_CHUNK_BYTES // per_row)
    total = torch.zeros(features, dtype=torch.float64)
    squares = torch.zeros(features, dtype=torch.float64)
    rows = rows.sort().values
    for start in range(0, len(rows), chunk):
        values = x[rows[start:start + chunk]].double().transpose(0, 1).reshape(features, -1)
        total += values.sum(dim=1)
        squares += (values * values).sum(dim=1)
        if release is not None:
            release()
    count = max(len(rows) * (x[0].numel() // features), 1)
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


@DATASETS.register("npz")
def load_npz(spec: DataSpec) -> DataSet:
    """`npz:PATH`: x, y, x_test, y_test (+ x_val, y_val) of any sample shape (see the module docstring)."""
    path = spec.arg
    arrays, files = read_arrays(path)
    pairs = [("x", "y"), ("x_test", "y_test")] + ([("x_val", "y_val")] if "x_val" in arrays else [])
    for x_name, y_name in pairs:
        _check_pair(path, arrays, x_name, y_name)
    task = spec.extra.get("task") or ("regression" if arrays["y"].dtype.kind == "f" else "classification")
    normalize = "none" if spec.extra.get("normalize") == "none" else "per-feature"
    has_val = "x_val" in arrays
    ys, num_outputs, class_names = _labels(path, task, [arrays["y"], arrays["y_test"]]
                                           + ([arrays["y_val"]] if has_val else []))
    x_pool, x_test = _as_tensor(arrays["x"]), _as_tensor(arrays["x_test"])
    y_pool = ys[0]
    if has_val:  # the given validation rows follow the training rows in the pool
        n_train = len(x_pool)
        x_pool = torch.cat([x_pool, _as_tensor(arrays["x_val"])])
        y_pool = torch.cat([y_pool, ys[2]])
        train_idx, val_idx = torch.arange(n_train), torch.arange(n_train, len(x_pool))
    else:
        train_idx, val_idx = split_pool(len(y_pool), spec.val_fraction, spec.split_seed)
    maps = [getattr(a, "_mmap", None) for a in (arrays["x"], arrays["x_test"])]
    maps = [m for m in maps if m is not None]
    mapped = MappedSamples(maps, x_pool[0].numel() * x_pool.element_size()) if maps and not has_val else None
    release = mapped.release if mapped is not None else None
    mean, std = feature_stats(x_pool, train_idx, release) if normalize == "per-feature" else ((), ())
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}:{sha256_of_file(file)}\n".encode())
    digest.update(f"{task}:{normalize}:{mean}:{std}:{fingerprint(train_idx, val_idx)}".encode())
    return DataSet(name=f"npz:{path}", task=task, x_pool=x_pool, y_pool=y_pool, train_idx=train_idx,
                   val_idx=val_idx, x_test=x_test, y_test=ys[1], num_outputs=num_outputs, mean=mean, std=std,
                   class_names=class_names, fingerprint=digest.hexdigest(), mapped=mapped,
                   normalization={"kind": normalize, "mean": list(mean), "std": list(std)})
