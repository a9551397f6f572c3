"""Paired comparison of groups of runs across seeds (kdcli.stats), recorded as a report artifact.

A group is a set of model artifacts named by `tag:TAG`, a ref-name glob (`demo/baseline-*`),
`sweep:SWEEP_REF:POINT` or comma-separated refs. Runs pair up by their manifest's seed; groups
whose seeds or data fingerprints differ are refused rather than compared.

`alternative` is about "better", not about the sign: "greater" tests whether a group beats the
baseline, i.e. a higher accuracy or a lower MSE (scipy's "less" on a - b for lower-is-better metrics).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from kdcli import plots, stats
from kdcli.errors import UsageError
from kdcli.stages.configs import check_choice
from kdcli.stages.visualize import record_report
from kdcli.store import Artifact, Store

LOWER_IS_BETTER = ("mse", "mae", "nll", "loss", "error", "latency", "size_bytes", "params")


def higher_is_better(metric: str) -> bool:
    return not any(word in metric for word in LOWER_IS_BETTER)


def scipy_alternative(alternative: str, higher: bool) -> str:
    """'greater' = better than the baseline -> scipy's alternative about (group - baseline)."""
    check_choice("alternative", alternative, stats.ALTERNATIVES)
    if higher or alternative == "two-sided":
        return alternative
    return "less" if alternative == "greater" else "greater"


def sweep_point(store: Store, ref: str, point: str) -> list[str]:
    """The run ids of one point of a sweep artifact."""
    sweep = store.get(ref, kind="sweep")
    rows = sweep.manifest["rows"]
    ids = [row["id"] for row in rows if row["point"] == point]
    if not ids:
        points = ", ".join(dict.fromkeys(row["point"] for row in rows))
        raise UsageError(f"sweep {ref!r} has no point {point!r}; its points are: {points}")
    return ids


def resolve_group(store: Store, spec: str) -> list[Artifact]:
    """tag:TAG | sweep:REF:POINT | a ref-name glob | REF[,REF...] -> model artifacts (each once)."""
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
    return [store.get(artifact_id, kind="model") for artifact_id in dict.fromkeys(ids)]


SELECTABLE = ("val_acc", "val_nll", "val_mse")


def default_metric(runs: list[Artifact]) -> str:
    """The reported metric: test_acc when every run has it (classification), else test_mse (regression).
    It is never a choice criterion: choices use `default_selection` (validation)."""
    for metric in ("test_acc", "test_mse"):
        if all(metric in (run.manifest.get("metrics") or {}) for run in runs):
            return metric
    raise UsageError("the runs share neither test_acc nor test_mse (classification mixed with regression?); "
                     "pass --metric")


def default_selection(runs: list[Artifact]) -> str:
    """The validation metric a choice between runs is made on: val_acc (classification) or val_mse."""
    return "val_mse" if all("test_mse" in (run.manifest.get("metrics") or {}) for run in runs) else "val_acc"


def check_selection(metric: str) -> None:
    """Choices are made on the validation split, by a metric comparable across objectives."""
    if metric not in SELECTABLE:
        raise UsageError(f"--select {metric!r}: choose by a validation metric that is comparable across runs, "
                         f"one of {', '.join(SELECTABLE)} (never a test metric, nor val_loss, which moves with "
                         "the objective's temperature and weights)")


def kept_value(run: Artifact, metric: str) -> float:
    """A validation metric of a run at its kept epoch (its metrics, else its history)."""
    metrics = run.manifest.get("metrics") or {}
    if metric in metrics:
        return float(metrics[metric])
    history, best = run.manifest.get("history") or [], metrics.get("best_epoch", 0)
    entry = history[best - 1] if 0 < best <= len(history) else {}
    if metric not in entry:
        raise UsageError(f"run {run.id[:12]} has no {metric} at its kept epoch (trained without a validation "
                         "split?); choosing needs a validation split (--val-fraction > 0)")
    return float(entry[metric])


def pair(groups: dict[str, list[Artifact]], metric: str) -> tuple[list[int], dict[str, list[float]]]:
    """The common seeds (sorted) and each group's metric per seed; refuses groups that do not pair up."""
    seed_sets, data = {}, {}
    for label, runs in groups.items():
        if len(runs) < 2:
            raise UsageError(f"group {label!r} has {len(runs)} run(s); each group needs at least 2 (one per seed)")
        seeds = [run.manifest.get("seed") for run in runs]
        if None in seeds:
            raise UsageError(f"group {label!r}: run {runs[seeds.index(None)].id[:12]} has no seed to pair by")
        duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
        if duplicates:
            raise UsageError(f"group {label!r} has several runs with seed {', '.join(map(str, duplicates))}; "
                             "pairing needs one run per seed")
        for run in runs:
            if metric not in (run.manifest.get("metrics") or {}):
                raise UsageError(f"run {run.id[:12]} in group {label!r} has no metric {metric!r}")
        prints = {run.manifest.get("data_fingerprint") for run in runs}
        if len(prints) > 1:
            raise UsageError(f"group {label!r} mixes runs trained on different data; pairing needs the same data")
        seed_sets[label], data[label] = set(seeds), prints.pop()
    first = next(iter(groups))
    for label in groups:
        if data[label] != data[first]:
            raise UsageError(f"groups {first!r} and {label!r} were trained on different data ({str(data[first])[:12]} vs "
                             f"{str(data[label])[:12]}: another data set or --split-seed?); paired runs need the same data")
        if seed_sets[label] != seed_sets[first]:
            raise UsageError(f"seeds do not pair up: {first!r} has seeds {_seeds(seed_sets[first])}, "
                             f"{label!r} has {_seeds(seed_sets[label])}")
    seeds = sorted(seed_sets[first])
    values = {label: [_by_seed(runs)[s].manifest["metrics"][metric] for s in seeds] for label, runs in groups.items()}
    return seeds, values


def _seeds(seeds) -> str:
    return ",".join(map(str, sorted(seeds)))


def _by_seed(runs: list[Artifact]) -> dict[int, Artifact]:
    return {run.manifest["seed"]: run for run in runs}


def analyze(groups: dict[str, list[Artifact]], metric: str, baseline: str, alternative: str = "greater",
            alpha: float = 0.05) -> dict:
    """Pair the groups by seed and test each against `baseline`; `decision` is the last comparison's."""
    if not 0 < alpha < 1:
        raise UsageError(f"--level must be between 0 and 1, got {alpha}")
    higher = higher_is_better(metric)
    seeds, values = pair(groups, metric)
    result = stats.compare_groups(values, baseline, scipy_alternative(alternative, higher), higher)
    result.update({"metric": metric, "alternative": alternative, "scipy_alternative": result["alternative"],
                   "alpha": alpha, "seeds": seeds})
    for label, runs in groups.items():
        by_seed = _by_seed(runs)
        result["groups"][label].update({"values": values[label], "ids": [by_seed[s].id for s in seeds]})
    last = result["comparisons"][-1]
    p = last["t_p_holm"] if len(result["comparisons"]) > 1 else last["t_p"]
    result["decision"] = {"a": last["a"], "b": last["b"], "p": p, "significant": bool(p < alpha),
                          "test": "paired t" + (", Holm-adjusted" if len(result["comparisons"]) > 1 else "")}
    return result


def reference_value(store: Store, ref: str, metric: str) -> tuple[str, float]:
    """A teacher's figure: a model's `metric`, or a logits table's `teacher_<metric>`."""
    artifact = store.get(ref)
    metrics = artifact.manifest.get("metrics") or {}
    for key in (metric, f"teacher_{metric}"):
        if isinstance(metrics.get(key), (int, float)):
            return artifact.id, float(metrics[key])
    raise UsageError(f"reference {ref!r} has no {metric!r}")


@dataclass
class CompareConfig:
    groups: list[str]  # group specs, at least 2
    labels: list[str] = field(default_factory=list)  # display labels, in order (default: the specs)
    metric: str | None = None  # default: test_acc (classification) or test_mse (regression)
    baseline: str | None = None  # a label or a 0-based index (default: the first group)
    alternative: str = "greater"  # about "better than the baseline": greater, less or two-sided
    alpha: float = 0.05  # significance level of `decision`
    reference: str | None = None  # a teacher artifact whose metric is drawn and reported
    plot: str | None = None  # PNG path of the box plot


def _labels(cfg: CompareConfig) -> list[str]:
    if len(cfg.groups) < 2:
        raise UsageError(f"compare needs at least 2 groups, got {len(cfg.groups)}")
    if len(cfg.labels) > len(cfg.groups):
        raise UsageError(f"{len(cfg.labels)} --label values for {len(cfg.groups)} groups")
    labels = list(cfg.labels) + cfg.groups[len(cfg.labels):]
    if len(set(labels)) != len(labels):
        raise UsageError(f"group labels must differ, got {', '.join(labels)}")
    return labels


def _baseline(cfg: CompareConfig, labels: list[str]) -> str:
    if cfg.baseline is None:
        return labels[0]
    if cfg.baseline in labels:
        return cfg.baseline
    if cfg.baseline.isdigit() and int(cfg.baseline) < len(labels):
        return labels[int(cfg.baseline)]
    raise UsageError(f"--baseline {cfg.baseline!r} is neither a group label ({', '.join(labels)}) "
                     f"nor an index 0..{len(labels) - 1}")


def compare(cfg: CompareConfig, store: Store) -> dict:
    """Resolve, pair and test the groups; draw the box plot; store the result as a report artifact."""
    labels = _labels(cfg)
    baseline = _baseline(cfg, labels)
    groups = {label: resolve_group(store, spec) for label, spec in zip(labels, cfg.groups, strict=True)}
    metric = cfg.metric or default_metric([run for runs in groups.values() for run in runs])
    result = analyze(groups, metric, baseline, cfg.alternative, cfg.alpha)
    parents = {label: result["groups"][label]["ids"] for label in labels}
    reference = None
    if cfg.reference:
        parents["reference"], reference = reference_value(store, cfg.reference, metric)
        result["reference"] = {"id": parents["reference"], metric: reference}
    figures = []
    if cfg.plot:
        values = {label: result["groups"][label]["values"] for label in labels}
        figures.append(plots.box_plot(values, metric, cfg.plot, reference=reference))
        result["plot"] = str(cfg.plot)
    report = record_report(store, "compare", result, figures, parents)
    return {"id": report.id, **result}


def summary_rows(result: dict) -> list[dict]:
    """One flat row per group and per comparison (for CSV)."""
    rows = [{"row": "group", "name": label, **{k: g[k] for k in ("n", "mean", "std", "ci_low", "ci_high")}}
            for label, g in result["groups"].items()]
    keys = ("n", "mean_diff", "diff_ci_low", "diff_ci_high", "t", "t_p", "t_p_holm", "wilcoxon_p",
            "wilcoxon_p_holm", "cohens_dz")
    rows += [{"row": "comparison", "name": f"{c['a']} - {c['b']}", **{k: c[k] for k in keys}}
             for c in result["comparisons"]]
    return rows


def write_csv(result: dict, path: Path) -> None:
    import csv

    rows = summary_rows(result)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["metric", *columns])
        writer.writeheader()
        writer.writerows({"metric": result["metric"], **row} for row in rows)
