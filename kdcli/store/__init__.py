"""Content-addressed artifact store (DVC style).

Layout under the root (default ./artifacts, or --store / KDCLI_STORE):

    objects/sha256/ab/cdef....safetensors   tensors + the manifest's content (safetensors metadata "kdcli")
    objects/sha256/ab/cdef....json          sidecar: the whole manifest, readable, volatile fields included
    refs/NAME                               human name -> artifact id
    tags/TAG/ID                             tag membership (empty files)
    runs/KEY.json                           run cache: stage key -> artifact id
    locks/, leases/, tmp/, checkpoints/     working files

An artifact id is the sha256 of its .safetensors file. Writes go to tmp/ first and are renamed
into place, so a reader never sees half an object; reads re-hash the file and refuse a mismatch.

Ids are content: the file holds the tensors and the manifest minus the volatile fields
(objects.VOLATILE_FIELDS: creation time, versions, wall-clock timings), which live in the sidecar. The
same content therefore gets the same id on every run and machine, and storing it again rewrites nothing.
Objects written before this rule carry their creation time and versions inside the file: their ids
are still the sha256 of their bytes, so they read and verify as before, but rerunning their stage
gives a new (content) id rather than the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kdcli.errors import KdcliError, UsageError
from kdcli.store.locks import Holder, Leases, file_lock, hold_lease, is_live, scan_leases
from kdcli.store.maintenance import GcPlan, Problem, apply_gc, check, plan_gc, repair
from kdcli.store.objects import (
    Artifact,
    CorruptArtifact,
    canonical_json,
    embedded_manifest,
    join_volatile,
    now,
    sha256_of_file,
    split_volatile,
    versions,
    write_text_atomically,
)
from kdcli.store.remote import Transfer, pull, push

if TYPE_CHECKING:
    import torch

__all__ = ["KINDS", "Artifact", "CorruptArtifact", "Store", "canonical_json", "default_root", "sha256_of_file",
           "versions", "write_text_atomically"]

KINDS = ("model", "logits", "run", "sweep", "report", "export", "data")
MIN_PREFIX = 8
_HEX = re.compile(r"^[0-9a-f]+$")
_REF_NAME = re.compile(r"^[A-Za-z0-9_.@+-]+(/[A-Za-z0-9_.@+-]+)*$")


def save_file(tensors: dict[str, torch.Tensor], path, metadata: dict | None = None) -> None:
    """safetensors' save_file, imported on first use: torch, numpy and safetensors load only when
    tensors are read or written, so listing, naming and verifying the store start without them."""
    from safetensors.torch import save_file as write

    write(tensors, path, metadata=metadata)


def default_root() -> Path:
    return Path(os.environ.get("KDCLI_STORE", "artifacts"))


class Store:
    """The artifact store rooted at `root`. Every method is safe to call from several processes."""

    def __init__(self, root: Path | str | None = None, readonly: bool = False):
        """A store at `root` (created on first write). A root that is a file, or that cannot be
        written (unless `readonly`), is refused here with one line, before any work."""
        self.root = Path(root) if root is not None else default_root()
        self._check_root(readonly)

    def _check_root(self, readonly: bool) -> None:
        existing = self.root
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            where = "is a file" if existing == self.root else f"is under {existing}, which is a file"
            raise UsageError(f"--store {self.root} {where}, not a store directory")
        if not readonly and not os.access(existing, os.W_OK | os.X_OK):
            where = "" if existing == self.root else f" ({existing} is not writable)"
            raise UsageError(f"--store {self.root} cannot be written{where}")

    def exists(self) -> bool:
        """Has anything ever been stored here?"""
        return any((self.root / part).is_dir() for part in ("objects", "refs", "runs", "tags"))

    # -- paths ---------------------------------------------------------------
    def object_path(self, artifact_id: str) -> Path:
        return self.root / "objects" / "sha256" / artifact_id[:2] / f"{artifact_id[2:]}.safetensors"

    def checkpoint_path(self, key: str) -> Path:
        """Where a running stage with cache key `key` keeps its resumable state."""
        return self.root / "checkpoints" / f"{key}.pt"

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def tmp_path(self, suffix: str = "") -> Path:
        """A fresh, empty file under tmp/ for a write that is renamed into place when complete."""
        fd, tmp = tempfile.mkstemp(dir=self._dir("tmp"), suffix=suffix)
        os.close(fd)
        return Path(tmp)

    def _atomic_write_text(self, path: Path, text: str) -> None:
        """Write `text` to `path` through a synced temp file and a rename: readers see all or nothing."""
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._dir("tmp"), prefix=path.name + ".")
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            if isinstance(exc, OSError):
                raise KdcliError(f"could not write {path}: {exc.strerror or exc}") from exc
            raise

    def _lock_path(self, name: str) -> Path:
        return self.root / "locks" / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock")

    @contextlib.contextmanager
    def lock(self, name: str, on_wait: Callable[[Holder], None] | None = None) -> Iterator[Holder]:
        """An exclusive inter-process lock named `name`, safe on shared filesystems (kdcli.store.locks).

        `on_wait(holder)` is called once when another process holds it (holder.describe() is 'pid N')."""
        self._dir("locks")
        with file_lock(self._lock_path(name), on_wait) as holder:
            yield holder

    def stage_running(self, key: str) -> bool:
        """Does a live process hold the lock of the stage with cache key `key`?"""
        return is_live(self._lock_path(f"stage-{key}")) is not None

    @contextlib.contextmanager
    def lease(self, ids: Iterable[str] = (), checkpoints: Iterable[str] = ()) -> Iterator[None]:
        """While inside, gc removes none of `ids` (artifact ids, and everything they derive from) nor
        the checkpoints of the cache keys `checkpoints`. The lease ends with the block, or when its
        process dies (kdcli.store.locks says how that is told from another host)."""
        with hold_lease(self._dir("leases"), ids, checkpoints, self._atomic_write_text):
            yield

    def leases(self) -> Leases:
        return scan_leases(self.root / "leases")

    # -- objects ---------------------------------------------------------------
    def put(self, kind: str, tensors: dict[str, torch.Tensor], manifest: dict) -> Artifact:
        """Store tensors + manifest and return the artifact; content already stored is returned as is.

        The id hashes the tensors and the manifest's content (VOLATILE_FIELDS aside), so the same
        content gets the same id on every run and machine. Writes go through tmp/ and a rename."""
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        content, volatile = split_volatile({"kind": kind, **manifest})
        volatile.update(versions=versions(), created=now())
        prepared, seen = {}, set()
        for key, value in tensors.items():
            value = value.detach().cpu().contiguous()
            if value.data_ptr() in seen and value.numel():
                value = value.clone()
            seen.add(value.data_ptr())
            prepared[key] = value
        tmp = self.tmp_path(".safetensors")
        try:
            save_file(prepared, str(tmp), metadata={"kdcli": canonical_json(content)})
            artifact_id = sha256_of_file(tmp)
            final = self.object_path(artifact_id)
            if final.is_file() and sha256_of_file(final) == artifact_id:
                os.unlink(tmp)
            else:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise KdcliError(f"could not write artifact to {self.root}: {exc.strerror or exc}") from exc
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Artifact(artifact_id, final, self.settle_sidecar(final, content, volatile))

    def settle_sidecar(self, path: Path, content: dict, volatile: dict) -> dict:
        """The whole manifest of the object at `path`: keep a sidecar that agrees, else (re)write it."""
        sidecar = self.read_sidecar(path)
        if sidecar is not None and split_volatile(sidecar)[0] == content:
            return join_volatile(content, split_volatile(sidecar)[1])
        manifest = join_volatile(content, volatile)
        self.write_sidecar(path, manifest)
        return manifest

    def write_sidecar(self, path: Path, manifest: dict) -> None:
        self._atomic_write_text(path.with_suffix(".json"), json.dumps(manifest, indent=2, default=str))

    @staticmethod
    def read_sidecar(path: Path) -> dict | None:
        """The sidecar beside the object at `path` (unverified), or None."""
        try:
            sidecar = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None
        return sidecar if isinstance(sidecar, dict) else None

    def get(self, ref: str, kind: str | None = None) -> Artifact:
        """Resolve `ref`, re-hash its file and return it; corrupt or wrong-kind objects are refused.

        The manifest is the verified one inside the object, completed with the sidecar's volatile fields."""
        artifact_id = self.resolve(ref)
        path = self.object_path(artifact_id)
        actual = sha256_of_file(path)
        if actual != artifact_id:
            raise CorruptArtifact(
                f"artifact {artifact_id[:12]} is corrupt ({path} hashes to {actual[:12]}); "
                "run 'kdcli artifacts verify' and recreate it")
        try:
            content = embedded_manifest(path)
        except CorruptArtifact as exc:
            raise CorruptArtifact(f"artifact {artifact_id[:12]} has no readable manifest ({path})") from exc
        sidecar = self.read_sidecar(path)
        manifest = join_volatile(content, split_volatile(sidecar)[1]) if sidecar is not None else content
        if kind is not None and manifest.get("kind") != kind:
            raise UsageError(f"{ref!r} is a {manifest.get('kind')} artifact, expected a {kind}")
        return Artifact(artifact_id, path, manifest)

    def ids(self) -> list[str]:
        base = self.root / "objects" / "sha256"
        if not base.is_dir():
            return []
        return sorted(p.parent.name + p.stem for p in base.glob("*/*.safetensors"))

    def resolve(self, ref: str) -> str:
        """A name, a full id or a unique id prefix (>= 8 hex chars) -> the full id."""
        ref = ref.strip()
        ref_file = self.root / "refs" / ref
        if _REF_NAME.match(ref) and ref_file.is_file():
            artifact_id = ref_file.read_text().strip()
            if not self.object_path(artifact_id).is_file():
                raise KdcliError(f"name {ref!r} points to {artifact_id[:12]}, which is missing from the store")
            return artifact_id
        lowered = ref.lower()
        if _HEX.match(lowered) and len(lowered) >= MIN_PREFIX:
            if len(lowered) == 64 and self.object_path(lowered).is_file():
                return lowered
            shard = self.root / "objects" / "sha256" / lowered[:2]
            matches = sorted(lowered[:2] + p.stem for p in shard.glob(f"{lowered[2:]}*.safetensors"))
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UsageError(f"ambiguous artifact prefix {ref!r}: matches {', '.join(m[:12] for m in matches)}")
        names = self.refs()
        import difflib

        close = difflib.get_close_matches(ref, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown artifact {ref!r} in store {self.root}{hint}")

    def read_manifest(self, artifact_id: str) -> dict:
        """The manifest inside the object (its header, not re-hashed) with the sidecar's volatile fields.

        Fast, for listings: a hand-edited sidecar cannot change what it returns; {} when unreadable."""
        path = self.object_path(artifact_id)
        try:
            content = embedded_manifest(path)
        except (OSError, CorruptArtifact):
            return {}
        sidecar = self.read_sidecar(path)
        return join_volatile(content, split_volatile(sidecar)[1]) if sidecar is not None else content

    # -- refs and tags ----------------------------------------------------------
    def set_ref(self, name: str, artifact_id: str) -> None:
        check_ref_name(name)
        self._atomic_write_text(self.root / "refs" / name, artifact_id + "\n")

    def refs(self) -> dict[str, str]:
        base = self.root / "refs"
        if not base.is_dir():
            return {}
        return {p.relative_to(base).as_posix(): p.read_text().strip() for p in sorted(base.rglob("*")) if p.is_file()}

    def add_tag(self, tag: str, artifact_id: str) -> None:
        check_tag(tag)
        path = self.root / "tags" / tag / artifact_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def tagged(self, tag: str) -> list[str]:
        base = self.root / "tags" / tag
        return sorted(p.name for p in base.iterdir()) if base.is_dir() else []

    def tags(self) -> dict[str, list[str]]:
        base = self.root / "tags"
        return {p.name: self.tagged(p.name) for p in sorted(base.iterdir())} if base.is_dir() else {}

    # -- run cache ----------------------------------------------------------------
    @staticmethod
    def cache_key(stage: str, config: dict, inputs: dict, code: str | None = None) -> str:
        """The run-cache key of (stage, key config, inputs) made by the code whose fingerprint is `code`
        (kdcli.stages.runner.code_fingerprint); without `code`, the key of that run under any code.
        The package version is not part of it: the code fingerprint says when numerics changed."""
        payload = {"stage": stage, "config": config, "inputs": inputs}
        if code is not None:
            payload["code"] = code
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()

    def lookup_run(self, key: str) -> dict | None:
        """The run-cache entry for `key`, or None when unknown or its artifact is gone."""
        path = self.root / "runs" / f"{key}.json"
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return entry if self.object_path(entry["artifact"]).is_file() else None

    def record_run(self, key: str, stage: str, artifact_id: str) -> None:
        self.adopt_run({"key": key, "stage": stage, "artifact": artifact_id, "created": now()})

    def adopt_run(self, entry: dict) -> None:
        """Write a run-cache entry {key, stage, artifact, created} (e.g. one pulled from a remote)."""
        self._atomic_write_text(self.root / "runs" / f"{entry['key']}.json", json.dumps(entry, indent=2))

    def runs(self) -> list[dict]:
        base = self.root / "runs"
        entries = []
        for path in sorted(base.glob("*.json")) if base.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                entries.append(json.loads(path.read_text()))
        return entries

    # -- maintenance ----------------------------------------------------------------
    def verify(self) -> list[str]:
        """Re-hash every object; return the ids whose bytes do not match."""
        return [i for i in self.ids() if sha256_of_file(self.object_path(i)) != i]

    def check(self) -> list[Problem]:
        """Corrupt objects, missing parents, refs/tags/run entries to nothing, sidecars that disagree."""
        return check(self)

    def repair(self, problems: list[Problem]) -> tuple[list[str], list[Problem]]:
        """Fix what `check` found where it can: (what was done, the problems left)."""
        return repair(self, problems)

    def gc_plan(self, keep_checkpoints_days: float | None = None, all_checkpoints: bool = False) -> GcPlan:
        return plan_gc(self, keep_checkpoints_days, all_checkpoints)

    def apply_gc(self, plan: GcPlan) -> GcPlan:
        return apply_gc(self, plan)

    def gc(self, dry_run: bool = False, keep_checkpoints_days: float | None = None,
           all_checkpoints: bool = False) -> list[str]:
        """Remove what no ref, tag, cached run or live lease reaches (see maintenance.plan_gc);
        return the ids of the objects removed (or that would be, with dry_run)."""
        plan = self.gc_plan(keep_checkpoints_days, all_checkpoints)
        return (plan if dry_run else self.apply_gc(plan)).objects

    # -- remotes ----------------------------------------------------------------------
    def push(self, remote: str, ids: list[str] | None = None, storage_options: dict | None = None) -> Transfer:
        """Send to the fsspec URL `remote` the objects it lacks (`ids` and their ancestors, or all),
        then the refs, tags and run-cache entries pointing to them (kdcli.store.remote)."""
        return push(self, remote, ids, storage_options)

    def pull(self, remote: str, refs: list[str] | None = None, storage_options: dict | None = None) -> Transfer:
        """Fetch `refs` (names or ids on the remote; all when None) and their ancestors, re-hashing
        every object before accepting it, then merge refs, tags and run-cache entries."""
        return pull(self, remote, refs, storage_options)


def check_ref_name(name: str) -> None:
    """A name (refs/NAME) is path segments of letters, digits, '.', '_', '-', '@', '+'; never '..', and never
    all hex of id-prefix length (it would hide the artifact whose id starts that way)."""
    if not _REF_NAME.match(name) or ".." in name.split("/"):
        raise UsageError(f"invalid name {name!r}: use letters, digits, '.', '_', '-', '@', '+' and '/'")
    if len(name) >= MIN_PREFIX and _HEX.match(name.lower()):
        raise UsageError(f"invalid name {name!r}: {MIN_PREFIX} or more hex digits read as an artifact id prefix; "
                         "add a letter outside a-f")


def check_tag(tag: str) -> None:
    """A tag is one segment of the characters a name may use."""
    if not _REF_NAME.match(tag) or "/" in tag or tag in (".", ".."):
        raise UsageError(f"invalid tag {tag!r}: use letters, digits, '.', '_', '-', '@' and '+'")
