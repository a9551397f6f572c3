"""Model cards: one Markdown page on a model artifact, from the store alone.

Teacher, data set and fingerprint, recipe (the options that differ from the stage's defaults), test
metrics, and, when a stored `compare` report holds this run in one of its groups, that group's mean
with its confidence interval over seeds and the paired comparison against the report's baseline;
then the exports made of it and the lineage commands that rebuild it (kdcli.stages.lineage).
"""

from __future__ import annotations

import dataclasses

from kdcli.stages.lineage import REF_FIELDS, commands, lineage, stage_config
from kdcli.store import Artifact, Store


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def recipe(manifest: dict) -> dict:
    """The resolved config's values that differ from the stage's defaults (all of it for other stages)."""
    config = manifest.get("config") or {}
    cls = stage_config(manifest.get("stage", ""))
    if cls is None:
        return config
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)}
    changed = {k: v for k, v in config.items() if k in defaults and v != defaults[k]}
    parents = manifest.get("parents") or {}
    for name, role in REF_FIELDS.items():  # a parent named by a ref: the ref and the id it meant
        if name in changed and isinstance(parents.get(role), str):
            changed[name] = f"{changed[name]} ({parents[role][:12]})"
    return changed


def covering_report(store: Store, artifact_id: str) -> tuple[str, dict, str] | None:
    """The newest compare report with `artifact_id` in a group -> (report id, result, group label)."""
    found = []
    for report_id in store.ids():
        manifest = store.read_manifest(report_id)
        if manifest.get("kind") != "report" or manifest.get("report") != "compare":
            continue
        for label, group in (manifest.get("result") or {}).get("groups", {}).items():
            if artifact_id in group.get("ids", []):
                found.append((manifest.get("created", ""), report_id, label))
    if not found:
        return None
    _, report_id, label = max(found)
    return report_id, store.get(report_id).manifest["result"], label


def teacher_of(store: Store, manifest: dict) -> Artifact | None:
    """The teacher model: a `teacher` parent, or the teacher behind a `logits` parent."""
    parents = manifest.get("parents") or {}
    if parents.get("teacher"):
        return store.get(parents["teacher"])
    if parents.get("logits"):
        table = store.get(parents["logits"])
        teacher = (table.manifest.get("parents") or {}).get("teacher")
        return store.get(teacher) if teacher else None
    return None


def exports_of(store: Store, artifact_id: str) -> list[dict]:
    """Manifests (with "id") of the export artifacts made of `artifact_id`."""
    manifests = ({**store.read_manifest(i), "id": i} for i in store.ids())
    return [m for m in manifests if m.get("kind") == "export" and (m.get("parents") or {}).get("model") == artifact_id]


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def render_card(store: Store, ref: str) -> str:
    """The model card of model artifact `ref` as Markdown."""
    artifact = store.get(ref, kind="model")
    manifest = artifact.manifest
    spec, metrics, data = manifest.get("model") or {}, manifest.get("metrics") or {}, manifest.get("data") or {}
    names = sorted(name for name, target in store.refs().items() if target == artifact.id)
    args = ", ".join(f"{k}={_fmt(v)}" for k, v in (spec.get("args") or {}).items())
    lines = [f"# Model card: {names[0] if names else artifact.id[:12]}", "",
             f"- artifact: `{artifact.id}` ({manifest.get('stage', '?')}, created {manifest.get('created', '?')})",
             f"- architecture: `{spec.get('name', '?')}`{' (' + args + ')' if args else ''}, "
             f"{metrics.get('params', '?')} parameters",
             f"- seed: {manifest.get('seed')}; versions: "
             + ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items()), ""]
    teacher = teacher_of(store, manifest)
    lines += ["## Teacher", ""]
    if teacher is None:
        lines += ["None: trained on the labels alone.", ""]
    else:
        t_metrics = teacher.manifest.get("metrics") or {}
        t_score = next((f"{k} {t_metrics[k]:.4g}" for k in ("test_bpb", "test_acc", "test_mse") if k in t_metrics), "")
        lines += [f"`{(teacher.manifest.get('model') or {}).get('name', '?')}` (`{teacher.id[:12]}`, "
                  f"{teacher.manifest.get('stage', '?')}; {t_score}, {t_metrics.get('params', '?')} parameters)", ""]
    lines += ["## Data", "", f"- data set: `{data.get('name', '?')}`, {data.get('num_outputs', '?')} outputs, "
              f"inputs {data.get('input_shape', '?')}",
              f"- split: {data.get('train', '?')} train / {data.get('val', '?')} validation / {data.get('test', '?')} test",
              f"- fingerprint: `{manifest.get('data_fingerprint', '?')}`", "",
              "## Recipe", "", *_table(["option", "value"], [[k, v] for k, v in sorted(recipe(manifest).items())]), "",
              "## Metrics (test split; training figures beside them)", "",
              *_table(["metric", "value"], [[k, v] for k, v in metrics.items() if isinstance(v, (int, float))]), ""]
    covered = covering_report(store, artifact.id)
    if covered:
        report_id, result, label = covered
        metric = result["metric"]
        group = result["groups"][label]
        level = int(100 * result.get("confidence", 0.95))
        lines += [f"## Over seeds (compare report `{report_id[:12]}`)", "",
                  f"{metric} of group **{label}** over seeds {result.get('seeds')}: mean {group['mean']:.4g} "
                  f"± {group['std']:.4g} (std), {level}% CI [{group['ci_low']:.4g}, {group['ci_high']:.4g}], "
                  f"n = {group['n']}.", ""]
        rows = [[f"{c['a']} - {c['b']}", c["mean_diff"], f"[{c['diff_ci_low']:.4g}, {c['diff_ci_high']:.4g}]",
                 c["t_p"], c["wilcoxon_p"], c["cohens_dz"]]
                for c in result.get("comparisons", []) if label in (c["a"], c["b"])]
        if rows:
            lines += [f"Paired against the baseline **{result.get('baseline')}** ({result.get('alternative')}):", "",
                      *_table(["pair", "mean diff", f"{level}% CI", "paired t p", "Wilcoxon p", "Cohen's d_z"], rows),
                      ""]
    exports = exports_of(store, artifact.id)
    if exports:
        lines += ["## Exports", "", *_table(
            ["export", "format", "file bytes", "ms/batch 1", "ms/batch 64", "exported test", "parity max abs diff"],
            [[f"`{e['id'][:12]}`", e.get("format"), e["metrics"].get("file_bytes"), e["latency"].get("runtime_b1"),
              e["latency"].get("runtime_b64"), e["metrics"].get("test_acc", e["metrics"].get("test_mse")),
              e["metrics"].get("parity_max_abs_diff")] for e in exports]), ""]
    root, nodes = lineage(store, artifact.id)
    lines += ["## Lineage", "", "Run in order, these commands rebuild this model:", "", "```sh",
              *commands(root, nodes), "```", ""]
    return "\n".join(lines)
