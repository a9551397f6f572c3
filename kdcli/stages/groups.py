"""Which runs a compare group names: `tag:TAG`, `sweep:SWEEP_REF:POINT`, a ref-name glob
(`demo/baseline-*`) or comma-separated refs, of model or export artifacts. An export stands for its
model with the exported graph's test metrics, file size and runtime latency (`ExportedRun`), and
`int8:SPEC` takes its post-training int8 graph.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from kdcli.errors import UsageError
from kdcli.store import Artifact, Store


def sweep_point(store: Store, ref: str, point: str) -> list[str]:
    """The run ids of one point of a sweep artifact."""
    sweep = store.get(ref, kind="sweep")
    rows = sweep.manifest["rows"]
    ids = [row["id"] for row in rows if row["point"] == point]
    if not ids:
        points = ", ".join(dict.fromkeys(row["point"] for row in rows))
        raise UsageError(f"sweep {ref!r} has no point {point!r}; its points are: {points}")
    return ids


@dataclass(frozen=True)
class ExportedRun:
    """An export artifact seen as a run of its model: the model's manifest (seed, config, data), with
    the metrics, file size and latency of the exported graph as its runtime measured them on the CPU;
    `int8`: of the post-training int8 graph beside it (export --int8)."""

    id: str
    manifest: dict


def exported_run(store: Store, export: Artifact, int8: bool) -> ExportedRun:
    m, latency = export.manifest.get("metrics") or {}, export.manifest.get("latency") or {}
    if int8 and "int8_file_bytes" not in m:
        raise UsageError(f"export {export.id[:12]} has no post-training int8 graph (exported without --int8, or "
                         "trained with --quantize int8, whose graph is int8 itself); drop int8:")
    model = store.get(export.manifest["parents"]["model"], kind="model")
    prefix, timed = ("int8_", "int8") if int8 else ("", "runtime")
    metrics = {key.removeprefix(prefix): value for key, value in m.items()
               if key.startswith(prefix + "test_") and not key.endswith("_change")}
    metrics.update(params=m.get("params"), size_bytes=m[prefix + "file_bytes"],
                   latency_ms_per_batch64=latency.get(f"{timed}_b64"))
    runtime = {"onnx": "onnxruntime", "torchscript": "torchscript"}.get(export.manifest.get("format"), "runtime")
    return ExportedRun(export.id, {**model.manifest, "metrics": metrics, "device": f"cpu {runtime}"})


def resolve_group(store: Store, spec: str) -> list[Artifact | ExportedRun]:
    """[int8:]tag:TAG | sweep:REF:POINT | a ref-name glob | REF[,REF...] -> runs (each once): model
    artifacts as they are, export artifacts as `ExportedRun`s; int8: takes exports' post-training int8 graphs."""
    int8 = spec.startswith("int8:")
    spec = spec.removeprefix("int8:")
    if spec.startswith("tag:"):
        ids = store.tagged(spec[4:])
        if not ids:
            raise UsageError(f"no artifacts tagged {spec[4:]!r}")
    elif spec.startswith("sweep:"):
        ref, sep, point = spec[6:].partition(":")
        if not sep or not ref or not point:
            raise UsageError(f"a sweep group is sweep:SWEEP_REF:POINT, got {spec!r}")
        ids = sweep_point(store, ref, point)
    elif any(ch in spec for ch in "*?["):
        refs = store.refs()
        ids = [target for name, target in refs.items() if fnmatch.fnmatchcase(name, spec)]
        if not ids:
            raise UsageError(f"no artifact names match {spec!r}")
    else:
        ids = [store.resolve(ref) for ref in spec.split(",") if ref.strip()]
        if not ids:
            raise UsageError(f"empty group {spec!r}")
    runs = []
    for artifact in (store.get(artifact_id) for artifact_id in dict.fromkeys(ids)):
        if artifact.kind == "export":
            runs.append(exported_run(store, artifact, int8))
        elif artifact.kind == "model" and not int8:
            runs.append(artifact)
        else:
            raise UsageError(f"{artifact.id[:12]} is a {artifact.kind} artifact; a group holds model or export "
                             "artifacts" + (" (int8: takes export artifacts)" if int8 else ""))
    return runs
