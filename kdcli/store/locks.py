"""Locks and leases that hold on a shared filesystem: atomic file creation, no flock.

A lock is a file created with O_CREAT|O_EXCL holding its holder's record (pid, host, process start
time, a token); a lease is a file naming the artifact ids and checkpoints a running stage uses. While
either is held, a heartbeat thread refreshes the file's mtime. A record is stale when its process is
gone: on the same host, its pid is dead or now belongs to a process started later; from another host
(whose processes cannot be asked), its heartbeat is older than STALE_AFTER_S.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0
_BREAKER_STALE_S = 30.0  # breaking a stale lock takes milliseconds; a breaker this old died mid-way


@functools.cache
def this_host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a lock or lease."""

    pid: int
    host: str
    start: str | None
    token: str

    @classmethod
    def current(cls) -> Holder:
        return cls(os.getpid(), this_host(), process_start(os.getpid()), uuid.uuid4().hex)

    def describe(self) -> str:
        return f"pid {self.pid}" if self.host == this_host() else f"pid {self.pid} on {self.host}"

    def alive(self, heartbeat: float) -> bool:
        """Is the holding process still running? `heartbeat` is the file's mtime."""
        if self.host != this_host():
            return time.time() - heartbeat < STALE_AFTER_S
        if not pid_alive(self.pid):
            return False
        return self.start is None or process_start(self.pid) in (None, self.start)


def read_record(path: Path) -> tuple[dict | None, float | None]:
    """(record, mtime) of a lock or lease file; (None, mtime) when unreadable, (None, None) when gone."""
    try:
        beat = path.stat().st_mtime
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):
        return None, beat
    return (record if isinstance(record, dict) else None), beat


def holder_of(record: dict | None) -> Holder | None:
    try:
        return Holder(int(record["pid"]), str(record["host"]), record.get("start"), str(record["token"]))
    except (KeyError, TypeError, ValueError):
        return None


def is_live(path: Path) -> Holder | None:
    """The live holder of the lock or lease at `path`, or None when there is none or it is stale."""
    record, beat = read_record(path)
    if beat is None:
        return None
    holder = holder_of(record)
    if holder is None:  # being written, or garbage: trust it only while it is young
        return None if time.time() - beat >= STALE_AFTER_S else Holder(0, "?", None, "")
    return holder if holder.alive(beat) else None


class Heartbeat:
    """While entered, refresh `path`'s mtime every `interval` seconds from a daemon thread."""

    def __init__(self, path: Path, interval: float | None = None):
        self.path, self.interval = path, interval or HEARTBEAT_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat {path.name}")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _create_exclusive(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists (atomic on local and NFSv3+ filesystems)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _unlink_if_token(path: Path, token: str) -> None:
    record, _ = read_record(path)
    if record is not None and record.get("token") == token:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _break_if_stale(path: Path) -> None:
    """Remove a stale lock, one breaker at a time (a breaker lock guards the check-and-remove)."""
    breaker = path.with_name(path.name + ".break")
    me = Holder.current()
    if not _create_exclusive(breaker, json.dumps(asdict(me))):
        with contextlib.suppress(OSError):
            if time.time() - breaker.stat().st_mtime > _BREAKER_STALE_S:
                breaker.unlink()
        return
    try:
        if is_live(path) is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        _unlink_if_token(breaker, me.token)


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[Holder], None] | None = None) -> Iterator[Holder]:
    """Hold the exclusive lock file `path`; `on_wait(holder)` is called once if another process has it."""
    me = Holder.current()
    record = json.dumps({**asdict(me), "created": time.time()})
    pause, told = 0.02, False
    while not _create_exclusive(path, record):
        holder = is_live(path)
        if holder is None:
            _break_if_stale(path)
            continue
        if on_wait is not None and not told and holder.pid:
            on_wait(holder)
            told = True
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)
    try:
        with Heartbeat(path):
            yield me
    finally:
        _unlink_if_token(path, me.token)


@contextlib.contextmanager
def hold_lease(directory: Path, ids: Iterable[str], checkpoints: Iterable[str],
               write: Callable[[Path, str], None]) -> Iterator[Path]:
    """A lease file in `directory` naming `ids` and checkpoint keys, removed on exit; `write` is atomic."""
    me = Holder.current()
    path = directory / f"{me.token}.json"
    write(path, json.dumps({**asdict(me), "created": time.time(), "ids": sorted(set(ids)),
                            "checkpoints": sorted(set(checkpoints))}))
    try:
        with Heartbeat(path):
            yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass
class Leases:
    """What the live leases in a store protect, and the lease files whose process is gone."""

    ids: set[str]
    checkpoints: set[str]
    expired: list[Path]


def scan_leases(directory: Path) -> Leases:
    found = Leases(set(), set(), [])
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        if is_live(path) is None:
            found.expired.append(path)
            continue
        record, _ = read_record(path)
        found.ids.update((record or {}).get("ids", []))
        found.checkpoints.update((record or {}).get("checkpoints", []))
    return found
