"""The data fingerprint of a data set read from files, computed once per file state.

`fingerprint` hashes every byte of the pool, its labels and the split: for a
CIFAR-sized pool about half a second, paid by every stage. A loader that read files names them in
`DataSet.sources`; the fingerprint is then cached in the store (KDCLI_STORE, default ./artifacts:
cache/fingerprints/KEY.json; a store that does not exist yet is not created for it), keyed by every
source file's path, size and modification time, the data set's shape and the split. A cached value
is trusted only if a sample of the tensors (rows spread over pool and test, with their labels) still
hashes as recorded; otherwise the whole data is hashed again. A process also remembers its results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from kdcli.store import canonical_json, default_root, write_text_atomically

SAMPLE_ROWS = 64
_MEMO: dict[str, str] = {}


def fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 of every tensor's shape, dtype and bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def file_state(sources: tuple[str, ...]) -> list[list]:
    """[path, size, mtime_ns] of every file under `sources` (files or directory trees), sorted."""
    state = []
    for source in sources:
        paths = [Path(source)] if Path(source).is_file() else sorted(p for p in Path(source).rglob("*") if p.is_file())
        for path in paths:
            stat = path.stat()
            state.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return state


def sample_digest(*tensors: torch.Tensor) -> str:
    """sha256 of SAMPLE_ROWS rows spread evenly over each tensor (first and last included), with shapes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        rows = torch.linspace(0, max(len(tensor) - 1, 0), min(SAMPLE_ROWS, len(tensor))).long().unique()
        sample = tensor[rows].detach().cpu().contiguous()
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def cached_fingerprint(data, compute: Callable[[], str], root: Path | None = None, part: str = "pool") -> str:
    """`compute()` (the full hash of `data`'s `part`: its pool and split, or its test split), or its
    cached value for the same files, shape and split."""
    recipe = {"files": file_state(data.sources), "name": data.name, "task": data.task,
              "pool": list(data.x_pool.shape), "test": list(data.x_test.shape),
              "split": fingerprint(data.train_idx, data.val_idx), **({"part": part} if part != "pool" else {})}
    key = hashlib.sha256(canonical_json(recipe).encode()).hexdigest()
    sample = sample_digest(data.x_pool, data.y_pool, data.x_test, data.y_test)
    if _MEMO.get(key + sample):
        return _MEMO[key + sample]
    root = Path(root) if root is not None else default_root()
    path = root / "cache" / "fingerprints" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(path.read_text())
        if cached["sample"] == sample:
            _MEMO[key + sample] = cached["fingerprint"]
            return cached["fingerprint"]
    value = _MEMO[key + sample] = compute()
    if root.is_dir():
        with contextlib.suppress(OSError):  # a cache that cannot be written is only work to redo
            write_text_atomically(path, json.dumps({"fingerprint": value, "sample": sample, "recipe": recipe}))
    return value

