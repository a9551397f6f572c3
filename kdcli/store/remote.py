"""Remotes: push a store to, and pull it from, any fsspec location (a local or mounted path, s3:// via
s3fs, other protocols by name), as DVC remotes work.

Remote layout. Every entry is a file of its own that is written once and never rewritten, so two
writers pushing at once lose nothing:

    objects/sha256/ab/cdef....safetensors (+ .json)  the objects and their sidecars, as in a store
    refs/NAME/~<ns>-<host>-<token>.json              one entry per ref update {id, set_ns, host, previous}
    tags/TAG/ID                                      tag membership
    runs/KEY/ID.json                                 run-cache entries
    tmp/                                             uploads in flight where a put is not atomic (push
                                                     clears those older than an hour)

Only objects missing on the other side are transferred; every pulled object is re-hashed before it
is accepted. A ref is moved only to a newer value (its file's mtime locally, `set_ns` remotely);
otherwise, or when two hosts pushed it at once, the conflict is reported and nothing is overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kdcli.errors import KdcliError, UsageError
from kdcli.store.locks import this_host
from kdcli.store.maintenance import TMP_STALE_S, artifact_parents, closure, header_reader
from kdcli.store.objects import CorruptArtifact, embedded_manifest, sha256_of_file, split_volatile

if TYPE_CHECKING:
    from kdcli.store import Store

ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}  # an object appears whole or not at all


@dataclass
class Transfer:
    """What a push or pull did: objects moved (ids), already present, bytes, and one line per event."""

    direction: str
    objects: list[str] = field(default_factory=list)
    present: int = 0
    bytes: int = 0
    seconds: float = 0.0
    refused: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def summary(self) -> str:
        mib = self.bytes / 2**20
        rate = f" ({mib / self.seconds:.1f} MiB/s)" if self.objects and self.seconds > 0 else ""
        parts = [f"{self.direction} {len(self.objects)} object(s), {mib:.2f} MiB in {self.seconds:.2f} s{rate}",
                 f"{self.present} already there"]
        if self.updated:
            parts.append(f"{len(self.updated)} ref(s) and cache entries updated")
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} conflict(s)")
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        return "; ".join(parts)


class Remote:
    """One fsspec location holding a remote store."""

    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec  # heavy optional dependency (pip install kdcli[remote])

        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except (ImportError, ValueError, TypeError) as exc:
            raise UsageError(f"remote {url}: {exc}") from None
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        self.atomic = bool(protocols & ATOMIC_PUT)
        self.root = self.root.rstrip("/")

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def find(self, relative: str) -> list[str]:
        """Every file under `relative`, as paths relative to the remote's root (fresh, not cached)."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self.path(relative))
        except FileNotFoundError:
            return []
        prefix = self.root.lstrip("/") + "/"
        return sorted(p.lstrip("/")[len(prefix):] for p in found if p.lstrip("/").startswith(prefix + relative + "/"))

    def object_ids(self) -> set[str]:
        return {p.split("/")[-2] + p.split("/")[-1][:-len(".safetensors")]
                for p in self.find("objects/sha256") if p.endswith(".safetensors")}

    def upload(self, local: Path, relative: str) -> None:
        self._place(relative, lambda target: self.fs.put_file(str(local), target))

    def write(self, relative: str, data: bytes) -> None:
        self._place(relative, lambda target: self.fs.pipe_file(target, data))

    def _place(self, relative: str, send) -> None:
        """Send to `relative` so that readers see all or nothing (a rename where a put is not atomic)."""
        if self.atomic:
            send(self.path(relative))
            return
        self.fs.makedirs(self.path("tmp"), exist_ok=True)
        self.fs.makedirs(self.path(relative).rsplit("/", 1)[0], exist_ok=True)
        staging = self.path(f"tmp/{uuid.uuid4().hex}")
        try:
            send(staging)
            self.fs.mv(staging, self.path(relative))
        finally:
            with contextlib.suppress(FileNotFoundError, OSError):
                if self.fs.exists(staging):
                    self.fs.rm(staging)

    def clear_stale_uploads(self) -> None:
        """Remove uploads in tmp/ that a killed writer left (older than maintenance.TMP_STALE_S)."""
        for relative in self.find("tmp"):
            with contextlib.suppress(OSError, KeyError, TypeError):
                modified = self.fs.info(self.path(relative))["mtime"]  # seconds, or a datetime
                seconds = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
                if time.time() - seconds > TMP_STALE_S:
                    self.fs.rm(self.path(relative))

    def read(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def download(self, relative: str, local: Path) -> None:
        self.fs.get_file(self.path(relative), str(local))

    def ref_log(self) -> dict[str, list[dict]]:
        """{ref name: its entries, oldest first}."""
        log: dict[str, list[dict]] = {}
        for relative in self.find("refs"):
            name, _, entry = relative[len("refs/"):].rpartition("/")
            if name and entry.startswith("~") and entry.endswith(".json"):
                with contextlib.suppress(ValueError, OSError):
                    log.setdefault(name, []).append(json.loads(self.read(relative)))
        for entries in log.values():
            entries.sort(key=lambda e: (e.get("set_ns", 0), e.get("token", "")))
        return log

    def append_ref(self, name: str, artifact_id: str, set_ns: int, previous: str | None) -> None:
        token = uuid.uuid4().hex[:12]
        entry = {"name": name, "id": artifact_id, "set_ns": set_ns, "host": this_host(), "previous": previous,
                 "token": token}
        self.write(f"refs/{name}/~{set_ns:020d}-{this_host()}-{token}.json", json.dumps(entry).encode())


def _object_relative(artifact_id: str) -> str:
    return f"objects/sha256/{artifact_id[:2]}/{artifact_id[2:]}.safetensors"


def _when(set_ns: int) -> str:
    return _dt.datetime.fromtimestamp(set_ns / 1e9, _dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _remote_errors(url: str):
    """Failures of the remote's library (network, credentials, missing bucket) as one line."""
    try:
        yield
    except (KdcliError, KeyboardInterrupt):
        raise
    except Exception as exc:  # botocore, aiohttp, paramiko...: each library has its own error types
        raise KdcliError(f"remote {url}: {type(exc).__name__}: {exc}") from None


def push(store: Store, url: str, ids: list[str] | None = None, storage_options: dict | None = None) -> Transfer:
    """Send the objects (`ids` and what they derive from; all when None) the remote lacks, then the
    refs, tags and run-cache entries that point to them."""
    report = Transfer("pushed")
    started = time.perf_counter()
    with _remote_errors(url):
        remote = Remote(url, storage_options)
        if not remote.atomic:
            remote.clear_stale_uploads()
        scope = set(store.ids()) if ids is None else closure([store.resolve(i) for i in ids], header_reader(store))
        there = remote.object_ids()
        report.present = len(scope & there)
        for artifact_id in sorted(scope - there):
            path = store.object_path(artifact_id)
            if sha256_of_file(path) != artifact_id:
                report.refused.append(f"local object {artifact_id[:12]} is corrupt; not pushed "
                                      "('kdcli artifacts verify' names it)")
                continue
            remote.upload(path, _object_relative(artifact_id))
            if path.with_suffix(".json").is_file():
                remote.upload(path.with_suffix(".json"), _object_relative(artifact_id)[:-len(".safetensors")] + ".json")
            report.objects.append(artifact_id)
            report.bytes += path.stat().st_size
        pushed = (scope & there) | set(report.objects)
        _push_links(store, remote, pushed, report)
    report.seconds = time.perf_counter() - started
    return report


def _push_links(store: Store, remote: Remote, pushed: set[str], report: Transfer) -> None:
    existing = set(remote.find("tags")) | set(remote.find("runs"))
    for tag, members in store.tags().items():
        for member in sorted(set(members) & pushed):
            if f"tags/{tag}/{member}" not in existing:
                remote.write(f"tags/{tag}/{member}", b"")
    for entry in store.runs():
        relative = f"runs/{entry['key']}/{entry['artifact']}.json"
        if entry.get("artifact") in pushed and relative not in existing:
            remote.write(relative, json.dumps(entry).encode())
    log = remote.ref_log()
    for name, target in store.refs().items():
        if target not in pushed:
            continue
        newest = log.get(name, [None])[-1]
        if newest is not None and newest["id"] == target:
            continue
        set_ns = (store.root / "refs" / name).stat().st_mtime_ns
        if newest is None or set_ns > newest["set_ns"]:
            remote.append_ref(name, target, set_ns, newest["id"] if newest else None)
            report.updated.append(f"ref {name}: {newest['id'][:12] if newest else '(new)'} -> {target[:12]}")
        else:
            report.conflicts.append(
                f"ref {name}: the remote's ({newest['id'][:12]}, set {_when(newest['set_ns'])} on {newest['host']}) "
                f"is newer than yours ({target[:12]}); kept it: pull to take it, or push under another name")


def pull(store: Store, url: str, refs: list[str] | None = None, storage_options: dict | None = None) -> Transfer:
    """Fetch `refs` (remote names or ids; everything when None) and what they derive from, re-hashing
    each object before accepting it; then merge refs, tags and run-cache entries."""
    report = Transfer("pulled")
    started = time.perf_counter()
    with _remote_errors(url):
        remote = Remote(url, storage_options)
        there = remote.object_ids()
        log = remote.ref_log()
        if not there and not log:
            raise KdcliError(f"no store at remote {url}: it holds no objects")
        wanted = sorted(there) if refs is None else [_remote_target(ref, log, there, url) for ref in refs]
        accepted = _pull_objects(store, remote, wanted, there, report)
        names = log if refs is None else {r: log[r] for r in refs if r in log}
        _pull_links(store, remote, accepted, names, report)
    report.seconds = time.perf_counter() - started
    return report


def _remote_target(ref: str, log: dict[str, list[dict]], there: set[str], url: str) -> str:
    if ref in log:
        return log[ref][-1]["id"]
    matches = sorted(i for i in there if len(ref) >= 8 and i.startswith(ref.lower()))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"ambiguous id prefix {ref!r} on remote {url}: {', '.join(m[:12] for m in matches)}")
    raise UsageError(f"{ref!r} is neither a name nor an id on remote {url}")


def _pull_objects(store: Store, remote: Remote, wanted: list[str], there: set[str], report: Transfer) -> set[str]:
    """Fetch `wanted` and their parents; returns the ids now held locally (present or accepted)."""
    pending, done, accepted = list(wanted), set(), set()
    while pending:
        artifact_id = pending.pop()
        if artifact_id in done:
            continue
        done.add(artifact_id)
        final = store.object_path(artifact_id)
        if final.is_file():
            report.present += 1
        elif artifact_id in there:
            if not _fetch(store, remote, artifact_id, report):
                continue
        else:
            continue  # a parent on neither side (a data fingerprint, or never pushed): verify reports it
        accepted.add(artifact_id)
        with contextlib.suppress(CorruptArtifact, OSError):
            pending.extend(p for p in artifact_parents(embedded_manifest(final)) if p not in done)
    return accepted


def _fetch(store: Store, remote: Remote, artifact_id: str, report: Transfer) -> bool:
    """Download one object to tmp/, re-hash it, and move it into place only if it matches its id."""
    tmp = store.tmp_path(".safetensors")
    try:
        remote.download(_object_relative(artifact_id), tmp)
        actual = sha256_of_file(tmp)
        if actual != artifact_id:
            report.refused.append(f"remote object {artifact_id[:12]} is corrupt (its bytes hash to {actual[:12]}); "
                                  "refused")
            return False
        final = store.object_path(artifact_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        size = tmp.stat().st_size
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    try:
        sidecar = json.loads(remote.read(_object_relative(artifact_id)[:-len(".safetensors")] + ".json"))
        volatile = split_volatile(sidecar)[1] if isinstance(sidecar, dict) else {}
    except (OSError, ValueError):
        volatile = {}
    store.settle_sidecar(final, embedded_manifest(final), volatile)
    report.objects.append(artifact_id)
    report.bytes += size
    return True


def _pull_links(store: Store, remote: Remote, accepted: set[str], log: dict[str, list[dict]],
                report: Transfer) -> None:
    for relative in remote.find("tags"):
        _, tag, member = (relative.split("/", 2) + ["", ""])[:3]
        if member in accepted and member not in store.tagged(tag):
            store.add_tag(tag, member)
    newest: dict[str, dict] = {}
    for relative in remote.find("runs"):
        with contextlib.suppress(ValueError, OSError):
            entry = json.loads(remote.read(relative))
            if entry.get("artifact") in accepted and entry.get("created", "") >= newest.get(entry["key"], {}).get(
                    "created", ""):
                newest[entry["key"]] = entry
    for key, entry in newest.items():
        mine = store.lookup_run(key)
        if mine is None:
            store.adopt_run(entry)
            report.updated.append(f"run-cache entry {key[:12]} -> {entry['artifact'][:12]}")
        elif mine["artifact"] != entry["artifact"]:
            report.conflicts.append(f"run-cache entry {key[:12]}: yours ({mine['artifact'][:12]}) kept; the remote's "
                                    f"run of the same stage gave {entry['artifact'][:12]}")
    local = store.refs()
    for name, entries in log.items():
        theirs = entries[-1]
        if len(entries) > 1 and entries[-2]["id"] != theirs["id"] and theirs.get("previous") != entries[-2]["id"]:
            report.conflicts.append(
                f"ref {name}: pushed at once from {entries[-2]['host']} ({entries[-2]['id'][:12]}) and "
                f"{theirs['host']} ({theirs['id'][:12]}); took the later, {theirs['id'][:12]}")
        if theirs["id"] not in accepted or local.get(name) == theirs["id"]:
            continue
        ref_file = store.root / "refs" / name
        if name in local and ref_file.stat().st_mtime_ns >= theirs["set_ns"]:
            report.conflicts.append(f"ref {name}: yours ({local[name][:12]}) is newer than the remote's "
                                    f"({theirs['id'][:12]}, set {_when(theirs['set_ns'])} on {theirs['host']}); kept yours")
            continue
        store.set_ref(name, theirs["id"])
        os.utime(ref_file, ns=(theirs["set_ns"], theirs["set_ns"]))
        report.updated.append(f"ref {name}: {local[name][:12] if name in local else '(new)'} -> {theirs['id'][:12]}")
