"""Checking and cleaning a store: verify (objects, links, sidecars), repair, and garbage collection.

Everything here reads manifests from inside the objects (whose bytes are re-hashed first), never from
the unverified sidecars; a store is passed in and used through its public methods.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kdcli.store.objects import (
    CorruptArtifact,
    embedded_manifest,
    join_volatile,
    sha256_of_file,
    split_volatile,
)

if TYPE_CHECKING:
    from kdcli.store import Store

DATA_PARENT = "data"  # parents["data"] is the data fingerprint, an object only when a prepared data set is stored
TMP_STALE_S = 3600  # a tmp file this old belongs to no live writer


def artifact_parents(manifest: dict) -> list[str]:
    """Every id a manifest's parents name, nested lists and dicts flattened."""
    parents = manifest.get("parents") or {}
    return [p for p in _flatten(parents) if isinstance(p, str)] if isinstance(parents, dict) else []


def _flatten(value) -> list:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def verified_manifests(store: Store, ids: list[str]) -> tuple[dict[str, dict], list[str]]:
    """({id: manifest inside the object} for objects whose bytes hash to their id, [corrupt ids])."""
    good, corrupt = {}, []
    for artifact_id in ids:
        path = store.object_path(artifact_id)
        try:
            if sha256_of_file(path) != artifact_id:
                raise CorruptArtifact(artifact_id)
            good[artifact_id] = embedded_manifest(path)
        except (OSError, CorruptArtifact):
            corrupt.append(artifact_id)
    return good, corrupt


def closure(roots, manifest_of: Callable[[str], dict | None]) -> set[str]:
    """Every id reachable from `roots` through parents; `manifest_of(id)` is None for an absent object."""
    pending, seen = list(roots), set()
    while pending:
        current = pending.pop()
        manifest = None if current in seen else manifest_of(current)
        if manifest is not None:
            seen.add(current)
            pending.extend(artifact_parents(manifest))
    return seen


# -- verify --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    kind: str  # corrupt, missing-parent, dangling-ref, dangling-tag, dangling-run, sidecar
    subject: str
    detail: str

    def line(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


def check(store: Store) -> list[Problem]:
    """Every problem in the store: corrupt objects, missing parents, dangling links, wrong sidecars."""
    good, corrupt = verified_manifests(store, store.ids())
    problems = [Problem("corrupt", i, f"{store.object_path(i)} does not hash to its id") for i in corrupt]
    present = set(good) | set(corrupt)
    for artifact_id, content in good.items():
        fingerprint = (content.get("parents") or {}).get(DATA_PARENT)
        for parent in artifact_parents(content):
            if parent not in present and parent != fingerprint:
                problems.append(Problem("missing-parent", artifact_id, f"parent {parent[:12]} is not in the store"))
        differs = sidecar_difference(store, artifact_id, content)
        if differs:
            problems.append(Problem("sidecar", artifact_id, differs))
    for name, target in store.refs().items():
        if target not in present:
            problems.append(Problem("dangling-ref", name, f"points to {target[:12]}, which is not in the store"))
    for tag, members in store.tags().items():
        problems += [Problem("dangling-tag", f"{tag}/{m}", "tags an id that is not in the store")
                     for m in members if m not in present]
    for entry in store.runs():
        if entry.get("artifact") not in present:
            problems.append(Problem("dangling-run", str(entry.get("key")),
                                    f"run-cache entry points to {str(entry.get('artifact'))[:12]}, which is not in the store"))
    return problems


def sidecar_difference(store: Store, artifact_id: str, content: dict) -> str:
    """'' when the sidecar agrees with the object's manifest, else what differs."""
    sidecar = store.read_sidecar(store.object_path(artifact_id))
    if sidecar is None:
        return "sidecar is missing or unreadable"
    theirs, ours = split_volatile(sidecar)[0], split_volatile(content)[0]
    if theirs == ours:
        return ""
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    return f"sidecar disagrees with the object in {', '.join(keys)}"


def repair(store: Store, problems: list[Problem]) -> tuple[list[str], list[Problem]]:
    """Rebuild sidecars from objects and prune dangling refs, tags and run-cache entries.

    Returns (what was done, one line each; the problems left: corrupt objects and missing parents)."""
    done, left = [], []
    for problem in problems:
        if problem.kind == "sidecar":
            path = store.object_path(problem.subject)
            content = embedded_manifest(path)
            old = store.read_sidecar(path)
            store.write_sidecar(path, join_volatile(content, split_volatile(old)[1] if old else {}))
            done.append(f"rebuilt the sidecar of {problem.subject[:12]} from the object")
        elif problem.kind == "dangling-ref":
            _unlink(store.root / "refs" / problem.subject)
            done.append(f"removed ref {problem.subject} ({problem.detail})")
        elif problem.kind == "dangling-tag":
            _unlink(store.root / "tags" / problem.subject)
            done.append(f"removed tag entry {problem.subject}")
        elif problem.kind == "dangling-run":
            _unlink(store.root / "runs" / f"{problem.subject}.json")
            done.append(f"removed run-cache entry {problem.subject[:12]}")
        else:
            left.append(problem)
    return done, left


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- gc ------------------------------------------------------------------------------------------

@dataclass
class GcPlan:
    """What gc removes, each list with its reason; `leased` is kept only because a live lease holds it."""

    started: float = field(default_factory=time.time)
    unreferenced: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    leased: list[str] = field(default_factory=list)
    checkpoints: list[tuple[Path, str]] = field(default_factory=list)
    refs: list[tuple[str, str]] = field(default_factory=list)
    tags: list[tuple[str, str]] = field(default_factory=list)
    runs: list[tuple[str, str]] = field(default_factory=list)
    files: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def objects(self) -> list[str]:
        return self.unreferenced + self.corrupt

    def lines(self) -> list[str]:
        return ([f"object {i} (nothing refers to it)" for i in self.unreferenced]
                + [f"object {i} (corrupt: its bytes do not hash to its id)" for i in self.corrupt]
                + [f"checkpoint {p.name} ({why})" for p, why in self.checkpoints]
                + [f"ref {name} (points to missing {target[:12]})" for name, target in self.refs]
                + [f"tag entry {tag}/{target[:12]} (missing object)" for tag, target in self.tags]
                + [f"run-cache entry {key[:12]} (points to missing {target[:12]})" for key, target in self.runs]
                + [f"file {p.relative_to(p.parents[1])} ({why})" for p, why in self.files])


def plan_gc(store: Store, keep_checkpoints_days: float | None = None, all_checkpoints: bool = False) -> GcPlan:
    """Decide what gc removes: unreferenced and corrupt objects (unless leased), links to missing
    objects, finished or abandoned checkpoints, expired leases and stale tmp files."""
    plan = GcPlan()
    leases = store.leases()
    good, corrupt = verified_manifests(store, store.ids())
    plan.corrupt = [i for i in corrupt if i not in leases.ids]
    survivors = set(good) | (set(corrupt) & leases.ids)
    referenced = closure(_roots(store), good.get)
    keep = closure(sorted(referenced | leases.ids), good.get)
    plan.unreferenced = [i for i in sorted(good) if i not in keep]
    plan.leased = sorted((keep - referenced) | (set(corrupt) & leases.ids))
    plan.refs = [(n, t) for n, t in store.refs().items() if t not in survivors]
    plan.tags = [(tag, m) for tag, members in store.tags().items() for m in members if m not in survivors]
    plan.runs = [(e["key"], e["artifact"]) for e in store.runs() if e.get("artifact") not in survivors]
    finished = {e["key"] for e in store.runs() if e.get("artifact") in survivors}
    for checkpoint in sorted((store.root / "checkpoints").glob("*.pt")):
        key = checkpoint.stem
        if key in leases.checkpoints or store.stage_running(key):
            continue
        age_days = (plan.started - checkpoint.stat().st_mtime) / 86400
        if key in finished:
            plan.checkpoints.append((checkpoint, "its run finished"))
        elif all_checkpoints:
            plan.checkpoints.append((checkpoint, "abandoned: no running stage"))
        elif keep_checkpoints_days is not None and age_days > keep_checkpoints_days:
            plan.checkpoints.append((checkpoint, f"abandoned {age_days:.1f} days ago"))
    plan.files = [(p, "expired lease") for p in leases.expired]
    plan.files += [(p, "stale temporary file") for p in sorted((store.root / "tmp").glob("*"))
                   if plan.started - p.stat().st_mtime > TMP_STALE_S]
    return plan


def _roots(store: Store) -> list[str]:
    roots = list(store.refs().values()) + [e["artifact"] for e in store.runs()]
    return roots + [i for ids in store.tags().values() for i in ids]


def apply_gc(store: Store, plan: GcPlan) -> GcPlan:
    """Remove what `plan` lists, except what became used since it was made; returns what was removed.

    Under the store's gc lock the roots and leases are read again (headers only), so an object named,
    cached, leased or written after planning survives."""
    removed = GcPlan(started=plan.started)
    with store.lock("gc"):
        leases = store.leases()
        manifest_of = header_reader(store)
        keep = closure(_roots(store) + sorted(leases.ids), manifest_of)
        for artifact_id in plan.unreferenced:
            path = store.object_path(artifact_id)
            with contextlib.suppress(FileNotFoundError):
                if artifact_id not in keep and path.stat().st_mtime <= plan.started:
                    _remove_object(path)
                    removed.unreferenced.append(artifact_id)
        for artifact_id in plan.corrupt:
            if artifact_id not in leases.ids:
                _remove_object(store.object_path(artifact_id))
                removed.corrupt.append(artifact_id)
        refs = store.refs()
        removed.refs = [(n, t) for n, t in plan.refs if refs.get(n) == t]
        for name, _ in removed.refs:
            _unlink(store.root / "refs" / name)
        removed.tags = [(tag, m) for tag, m in plan.tags if not store.object_path(m).is_file()]
        for tag, member in removed.tags:
            _unlink(store.root / "tags" / tag / member)
        runs = {e["key"]: e.get("artifact") for e in store.runs()}
        removed.runs = [(key, target) for key, target in plan.runs if runs.get(key) == target]
        for key, _ in removed.runs:
            _unlink(store.root / "runs" / f"{key}.json")
        removed.checkpoints = [(p, why) for p, why in plan.checkpoints
                               if p.stem not in leases.checkpoints and not store.stage_running(p.stem)]
        for path, _ in removed.checkpoints + plan.files:
            _unlink(path)
        removed.files = plan.files
    return removed


def header_reader(store: Store) -> Callable[[str], dict | None]:
    """manifest_of(id): the manifest inside a stored object (header only, cached), None when absent."""
    cache: dict[str, dict | None] = {}

    def manifest_of(artifact_id: str) -> dict | None:
        if artifact_id not in cache:
            try:
                cache[artifact_id] = embedded_manifest(store.object_path(artifact_id))
            except (OSError, CorruptArtifact):
                cache[artifact_id] = None
        return cache[artifact_id]

    return manifest_of


def _remove_object(path: Path) -> None:
    for victim in (path, path.with_suffix(".json")):
        _unlink(victim)
