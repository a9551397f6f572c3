"""Data derived once and kept in the store: a trained tokenizer, a corpus's token windows.

`derived_once(store, stage, kind, key, make, check)` returns the artifact the run cache holds for (stage,
key); on a miss it first calls `check()` (which refuses bad input before the store is touched: not even
a lock file is written), then, under the stage's lock (one process makes it, the others wait and reuse it), it calls
`make(scratch)` -> (tensors, manifest) with a scratch folder inside the store for memory-mapped
intermediate files, stores the result and records it in the run cache.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from kdcli.store import Artifact, Store

Make = Callable[[Path], tuple[dict, dict]]


def derived_once(store: Store, stage: str, kind: str, key: dict, make: Make,
                 check: Callable[[], None] | None = None) -> Artifact:
    """The stored artifact of (stage, key), made by `make` the first time (after `check()`)."""
    cache_key = store.cache_key(stage, key, {})
    if check is not None and store.lookup_run(cache_key) is None:
        check()
    with store.lock(f"stage-{cache_key}"):
        entry = store.lookup_run(cache_key)
        if entry is not None:
            return store.get(entry["artifact"], kind=kind)
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=store.root, prefix=f"{stage}-") as scratch:
            tensors, manifest = make(Path(scratch))
            artifact = store.put(kind, tensors, {**manifest, "stage": stage, "source": key, "cache_key": cache_key})
            del tensors
        store.record_run(cache_key, stage, artifact.id)
    return artifact
