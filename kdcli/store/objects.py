"""Objects: safetensors files whose id is the sha256 of their bytes, and the manifest they carry.

The manifest inside an object holds only its content: kind, stage, config, parents, metrics, ...
The volatile fields (when and with what it was made, how long it took) change from run to run for
bit-identical tensors, so they stay out of the hashed file and live in the readable sidecar
(`<id>.json`, the whole manifest) beside it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdcli import __version__
from kdcli.errors import KdcliError

if TYPE_CHECKING:
    import torch

# Dotted paths of the manifest fields kept out of the hash (wall-clock facts); each part is a glob over
# dict keys, and "*" also walks every element of a list. Refs and paths as the user typed them (a name
# in one store, an id in another) are kept out too: the manifest's parents hold the ids they resolved to.
VOLATILE_FIELDS = ("created", "versions", "history.*.seconds", "metrics.*latency_ms*", "latency",
                   "config.teacher", "config.logits", "config.extra_teachers", "config.weights", "config.data_dir")
# safetensors dtype -> numpy dtype name (numpy and torch load only when a tensor is read or written)
_NUMPY_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32",
                 "U8": "uint8", "I8": "int8", "I16": "int16", "BOOL": "bool"}


class CorruptArtifact(KdcliError):
    """An object whose bytes no longer hash to its id."""


def write_text_atomically(path: Path, text: str) -> None:
    """All or nothing: a temp file beside `path`, then a rename (for caches kept beside the objects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def canonical_json(obj) -> str:
    """Deterministic JSON: sorted keys, no whitespace; the input of every cache key."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict:
    import torch

    return {"kdcli": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_header(path: Path) -> tuple[int, dict]:
    """Return (data offset, header dict) of a safetensors file."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CorruptArtifact(f"artifact file {path} is truncated")
        (size,) = struct.unpack("<Q", raw)
        header = handle.read(size)
    if len(header) < size:
        raise CorruptArtifact(f"artifact file {path} is truncated")
    try:
        return 8 + size, json.loads(header)
    except ValueError as exc:
        raise CorruptArtifact(f"artifact file {path} has an unreadable header") from exc


def embedded_manifest(path: Path) -> dict:
    """The manifest stored inside the object (its header only is read; the bytes are not re-hashed)."""
    try:
        _, header = read_header(path)
        return json.loads(header["__metadata__"]["kdcli"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptArtifact(f"artifact file {path} has no readable manifest") from exc


def _walk(node, parts: list[str], trail: tuple, found: list) -> None:
    """Collect (path tuple, value) of every field `parts` names under `node`."""
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        children = list(enumerate(node)) if head == "*" else []
    else:
        children = [(k, v) for k, v in node.items() if fnmatch.fnmatchcase(k, head)] if isinstance(node, dict) else []
    for key, child in children:
        if rest:
            _walk(child, rest, (*trail, key), found)
        else:
            found.append(((*trail, key), child))


def split_volatile(manifest: dict) -> tuple[dict, dict]:
    """(content, volatile): the manifest without VOLATILE_FIELDS, and those fields by dotted path."""
    content = copy.deepcopy(manifest)
    volatile = {}
    for field in VOLATILE_FIELDS:
        found: list = []
        _walk(content, field.split("."), (), found)
        for trail, value in found:
            parent = content
            for key in trail[:-1]:
                parent = parent[key]
            del parent[trail[-1]]
            volatile[".".join(map(str, trail))] = value
    return content, volatile


def join_volatile(content: dict, volatile: dict) -> dict:
    """The whole manifest: `content` with the `volatile` fields put back where they are missing."""
    manifest = copy.deepcopy(content)
    for dotted, value in volatile.items():
        *trail, last = dotted.split(".")
        parent = manifest
        for key in trail:
            parent = parent[int(key)] if isinstance(parent, list) else parent.get(key)
            if not isinstance(parent, (dict, list)):
                break
        else:
            if isinstance(parent, dict) and last not in parent:
                parent[last] = value
    return manifest


def content_of(manifest: dict) -> dict:
    return split_volatile(manifest)[0]


@dataclass
class Artifact:
    """A verified object in the store: its id, file and manifest. Tensors load on demand."""

    id: str
    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def tensor_names(self) -> list[str]:
        _, header = read_header(self.path)
        return sorted(k for k in header if k != "__metadata__")

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor, memory-mapped copy-on-write: pages are read only when touched."""
        offset, header = read_header(self.path)
        if name not in header or name == "__metadata__":
            raise KdcliError(f"artifact {self.id[:12]} has no tensor {name!r}")
        info = header[name]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] not in _NUMPY_DTYPES or end == start:
            return self.tensors()[name]
        import numpy as np
        import torch

        array = np.memmap(self.path, dtype=_NUMPY_DTYPES[info["dtype"]], mode="c",
                          offset=offset + start, shape=shape)
        return torch.from_numpy(array)

    def tensors(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path))
