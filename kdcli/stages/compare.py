"""Paired comparison of groups of runs across seeds (kdcli.stats), recorded as a report artifact.

A group is a set of model or export artifacts (kdcli.stages.groups resolves its spec). Runs pair up
by their manifest's seed. Groups whose seeds differ are refused; so are groups trained on different
data, unless `across_data` is asked and every run records one test split (a data-free student against
a real-data one, both tested on the teacher's real test split): those are compared, with a warning.
Groups whose configs differ in more than the method options (epochs, model, data options...) are
compared with a warning naming those keys. An identical compare (same groups, same options) reuses
its stored report.

Beside the statistics, `side_by_side` holds one row per group and one for the reference teacher:
the metric with its CI, parameters, compression against the teacher, size of the weights, latency per batch
on the device it ran on, and agreement with the teacher (seed 004's production evidence).

`alternative` is about "better", not about the sign: "greater" tests whether a group beats the
baseline, i.e. a higher accuracy or a lower MSE (scipy's "less" on a - b for lower-is-better metrics).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdcli import plots, stats
from kdcli.errors import UsageError
from kdcli.latency import measure_latency
from kdcli.stages.configs import TrainConfig, check_choice
from kdcli.stages.groups import resolve_group
from kdcli.stages.visualize import record_report
from kdcli.store import Artifact, CorruptArtifact, Store, canonical_json

LOWER_IS_BETTER = ("mse", "mae", "nll", "loss", "error", "latency", "size_bytes", "params", "bpb", "ppl", "ece")


def higher_is_better(metric: str) -> bool:
    return not any(word in metric for word in LOWER_IS_BETTER)


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """Accuracies and agreements are percentages: their intervals are kept within [0, 100]."""
    return (0.0, 100.0) if "acc" in metric or "agreement" in metric else None


def clip_notes(groups: dict[str, dict], bounds: tuple[float, float] | None) -> list[str]:
    """One note per group (label -> stats.describe) whose interval was clipped to the metric's bounds."""
    return [f"the 95% CI of {label} is clipped to [{bounds[0]:g}, {bounds[1]:g}] (a t interval ignores the "
            "bounds of a percentage)" for label, g in groups.items() if g.get("ci_clipped")]


def scipy_alternative(alternative: str, higher: bool) -> str:
    """'greater' = better than the baseline -> scipy's alternative about (group - baseline)."""
    check_choice("alternative", alternative, stats.ALTERNATIVES)
    if higher or alternative == "two-sided":
        return alternative
    return "less" if alternative == "greater" else "greater"


SELECTABLE = ("val_acc", "val_nll", "val_mse", "val_bpb")


def default_metric(runs: list[Artifact]) -> str:
    """The reported metric: test_bpb when every run has it (language models), test_acc (classification),
    else test_mse (regression). It is never a choice criterion: choices use `default_selection` (validation)."""
    for metric in ("test_bpb", "test_acc", "test_mse"):
        if all(metric in (run.manifest.get("metrics") or {}) for run in runs):
            return metric
    raise UsageError("the runs share none of test_bpb, test_acc, test_mse (classification mixed with regression?); "
                     "pass --metric")


def default_selection(runs: list[Artifact]) -> str:
    """The validation metric a choice between runs is made on: val_bpb (language models), val_mse
    (regression) or val_acc (classification)."""
    for test, selection in (("test_bpb", "val_bpb"), ("test_mse", "val_mse")):
        if all(test in (run.manifest.get("metrics") or {}) for run in runs):
            return selection
    return "val_acc"


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


def pair(groups: dict[str, list[Artifact]], metric: str,
         across_data: bool = False) -> tuple[list[int], dict[str, list[float]]]:
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
        shared_test = same_test_split(groups[first] + groups[label])
        if data[label] != data[first] and not (across_data and shared_test):
            if shared_test:
                hint = "; they share one test split: --across-data compares them"
            else:
                hint = "; --across-data needs one recorded test split, which they do not share" if across_data else ""
            raise UsageError(f"groups {first!r} and {label!r} were trained on different data ({str(data[first])[:12]} vs "
                             f"{str(data[label])[:12]}: another data set or --split-seed?); paired runs need the same "
                             f"data{hint}")
        if seed_sets[label] != seed_sets[first]:
            raise UsageError(f"seeds do not pair up: {first!r} has seeds {_seeds(seed_sets[first])}, "
                             f"{label!r} has {_seeds(seed_sets[label])}")
    seeds = sorted(seed_sets[first])
    values = {label: [_by_seed(runs)[s].manifest["metrics"][metric] for s in seeds] for label, runs in groups.items()}
    return seeds, values


def test_print(run) -> str | None:
    return (run.manifest.get("data") or {}).get("test_fingerprint")


def same_test_split(runs: list) -> bool:
    """Whether every run was tested on one recorded test split (inputs and targets alike)."""
    prints = {test_print(run) for run in runs}
    return len(prints) == 1 and None not in prints


def data_warning(groups: dict[str, list]) -> str | None:
    """One line when the groups were trained on different data sets but tested on one split."""
    prints = {label: runs[0].manifest.get("data_fingerprint") for label, runs in groups.items()}
    if len(set(prints.values())) == 1:
        return None
    shown = "; ".join(f"{label}: {str(fp)[:12]}" for label, fp in prints.items())
    return (f"the groups were trained on different data ({shown}) and tested on the same test split "
            f"({str(test_print(next(iter(groups.values()))[0]))[:12]}): the comparison includes the effect of the data")


def _seeds(seeds) -> str:
    return ",".join(map(str, sorted(seeds)))


def _by_seed(runs: list[Artifact]) -> dict[int, Artifact]:
    return {run.manifest["seed"]: run for run in runs}


def compared_keys() -> list[str]:
    """The config keys that define a training run besides its method options: every cache-key field of
    TrainConfig (data, model, optimization, augmentation) but the seed, which pairs the runs."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("key", True) and f.name != "seed"]


def config_differences(groups: dict[str, list[Artifact]]) -> dict[str, dict[str, list]]:
    """{key: {label: the group's distinct values}} for every compared key on which the groups differ."""
    differing = {}
    for key in compared_keys():
        per_group = {}
        for label, runs in groups.items():
            distinct = {canonical_json((run.manifest.get("config") or {}).get(key)): None for run in runs}
            per_group[label] = [json.loads(v) for v in sorted(distinct)]
        if len({canonical_json(v) for v in per_group.values()}) > 1:
            differing[key] = per_group
    return differing


def difference_warning(differing: dict[str, dict[str, list]]) -> str:
    """One line naming the keys other than the method options on which the compared groups differ."""
    parts = []
    for key, per_group in differing.items():
        shown = "; ".join(f"{label}: {', '.join(map(str, values)) or '-'}" for label, values in per_group.items())
        parts.append(f"{key} ({shown})")
    return ("the groups differ in more than the method options, so the comparison mixes those effects: "
            + ", ".join(parts))


def analyze(groups: dict[str, list[Artifact]], metric: str, baseline: str, alternative: str = "greater",
            alpha: float = 0.05, across_data: bool = False) -> dict:
    """Pair the groups by seed and test each against `baseline`; `decision` is the last comparison's."""
    if not 0 < alpha < 1:
        raise UsageError(f"--level must be between 0 and 1, got {alpha}")
    higher = higher_is_better(metric)
    seeds, values = pair(groups, metric, across_data)
    bounds = metric_bounds(metric)
    result = stats.compare_groups(values, baseline, scipy_alternative(alternative, higher), higher, bounds=bounds)
    result.update({"metric": metric, "alternative": alternative, "scipy_alternative": result["alternative"],
                   "alpha": alpha, "seeds": seeds})
    for label, runs in groups.items():
        by_seed = _by_seed(runs)
        result["groups"][label].update({"values": values[label], "ids": [by_seed[s].id for s in seeds]})
    for c in result["comparisons"]:  # per seed: better than, equal to, worse than the baseline
        signs = [(a > b) - (a < b) for a, b in zip(values[c["a"]], values[c["b"]], strict=True)]
        c["seeds_better"], c["seeds_equal"], c["seeds_worse"] = (
            signs.count(1 if higher else -1), signs.count(0), signs.count(-1 if higher else 1))
    result["warnings"] = [difference_warning(differing)] if (differing := config_differences(groups)) else []
    result["warnings"] += [warning] if (warning := data_warning(groups)) else []
    result["notes"] = clip_notes(result["groups"], bounds)
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


def reference_model(store: Store, artifact_id: str) -> Artifact | None:
    """The teacher model behind a reference: the artifact itself, or the teacher a logits table came from."""
    artifact = store.get(artifact_id)
    if artifact.kind == "model":
        return artifact
    teacher = (artifact.manifest.get("parents") or {}).get("teacher")
    try:
        return store.get(teacher, kind="model") if teacher else None
    except (UsageError, CorruptArtifact):  # its teacher was removed: the row shows what the table knows
        return None


def latency_of(store: Store, artifact: Artifact, batch: int = 64) -> dict:
    """{"ms": per batch, "batch", "device"}: the model's cached latency measurement (kdcli.latency) on the
    device it ran on (the CPU when that device is not here), or the figure an older run recorded."""
    recorded = (artifact.manifest.get("metrics") or {}).get(f"latency_ms_per_batch{batch}")
    if isinstance(recorded, (int, float)):
        return {"ms": float(recorded), "batch": batch, "device": artifact.manifest.get("device", "?")}
    device = torch.device(artifact.manifest.get("device") or "cpu")
    if device.type != "cpu" and not (device.type == "cuda" and torch.cuda.is_available()):
        device = torch.device("cpu")
    measured = measure_latency(store, artifact.id, device, batch=batch)
    return {"ms": measured["latency_ms"], "batch": batch, "device": measured["device"]}


def weights_bytes(artifact: Artifact) -> int:
    """The bytes of a model's stored weights (what a deployment ships; the artifact file also holds the
    manifest): the recorded size_bytes, else summed over its tensors."""
    recorded = (artifact.manifest.get("metrics") or {}).get("size_bytes")
    if isinstance(recorded, int):
        return recorded
    return sum(t.numel() * t.element_size() for t in artifact.tensors().values())


def _mean_of(values: list) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.fmean(numbers) if numbers else None


def side_row(store: Store, label: str, runs: list[Artifact], teacher_params: float | None) -> dict:
    """Model facts of one group (means over its runs): params, compression, weights' size, agreement, and
    the latency of its first run (the runs of a group share one architecture)."""
    params = _mean_of([(run.manifest.get("metrics") or {}).get("params") for run in runs])
    latencies = [latency_of(store, runs[0])] if runs else []
    return {
        "label": label, "params": params,
        "compression": teacher_params / params if teacher_params and params else None,
        "size_bytes": _mean_of([weights_bytes(run) for run in runs]),
        "latency_ms": _mean_of([lat["ms"] for lat in latencies]),
        "latency_batch": latencies[0]["batch"] if latencies else None,
        "device": ", ".join(sorted({lat["device"] for lat in latencies})) or None,
        "teacher_agreement": _mean_of([(run.manifest.get("metrics") or {}).get("teacher_agreement")
                                       for run in runs]),
    }


def side_by_side(store: Store, groups: dict[str, list[Artifact]], result: dict,
                 teacher: Artifact | None) -> list[dict]:
    """One row per group, then one for the reference teacher: the metric's mean and CI beside the model facts."""
    teacher_params = (teacher.manifest.get("metrics") or {}).get("params") if teacher else None
    rows = []
    for label, runs in groups.items():
        g = result["groups"][label]
        rows.append({**side_row(store, label, runs, teacher_params), "role": "group",
                     **{k: g[k] for k in ("n", "mean", "std", "ci_low", "ci_high")}})
    if result.get("reference"):
        row = side_row(store, "reference", [teacher] if teacher else [], teacher_params)
        rows.append({**row, "role": "reference", "id": result["reference"]["id"], "n": 1,
                     "mean": result["reference"][result["metric"]], "std": None, "ci_low": None, "ci_high": None,
                     "teacher_agreement": None})
    return rows


@dataclass
class CompareConfig:
    groups: list[str]  # group specs, at least 2
    labels: list[str] = field(default_factory=list)  # display labels, in order (default: the specs)
    metric: str | None = None  # default: test_acc (classification) or test_mse (regression)
    baseline: str | None = None  # a label or a 0-based index (default: the first group)
    alternative: str = "greater"  # about "better than the baseline": greater, less or two-sided
    alpha: float = 0.05  # significance level of `decision`
    across_data: bool = False  # pair groups trained on different data that were tested on one test split
    reference: str | None = None  # a teacher artifact whose metric is drawn and reported
    plot: str | None = None  # PNG path of the paired plot (not part of what makes two compares identical)


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
    """Resolve, pair and test the groups; draw the paired plot; store the result as a report artifact.

    An identical compare (same resolved runs, reference and options) returns its stored report, with
    `reused` set, and writes the stored plot where `cfg.plot` now asks."""
    labels = _labels(cfg)
    baseline = _baseline(cfg, labels)
    groups = {label: resolve_group(store, spec) for label, spec in zip(labels, cfg.groups, strict=True)}
    reference_id = store.resolve(cfg.reference) if cfg.reference else None
    key = _compare_key(cfg, groups, reference_id)
    reused = _reuse(store, key, cfg.plot)
    if reused is not None:
        return reused
    metric = cfg.metric or default_metric([run for runs in groups.values() for run in runs])
    result = analyze(groups, metric, baseline, cfg.alternative, cfg.alpha, cfg.across_data)
    parents = {label: result["groups"][label]["ids"] for label in labels}
    reference = None
    if reference_id:
        parents["reference"], reference = reference_value(store, reference_id, metric)
        result["reference"] = {"id": parents["reference"], metric: reference}
    result["side_by_side"] = side_by_side(store, groups, result, reference_model(store, reference_id) if reference_id else None)
    figures = []
    if cfg.plot:
        values = {label: result["groups"][label]["values"] for label in labels}
        differences = {c["a"]: {"values": [a - b for a, b in zip(values[c["a"]], values[c["b"]], strict=True)],
                                "mean": c["mean_diff"], "low": c["diff_ci_low"], "high": c["diff_ci_high"]}
                       for c in result["comparisons"]}
        figures.append(plots.paired_plot(values, result["seeds"], differences, metric, cfg.plot, reference=reference))
        result["plot"] = str(cfg.plot)
    config = {"groups": list(cfg.groups), "labels": labels, "metric": metric, "baseline": baseline,
              "alternative": cfg.alternative, "alpha": cfg.alpha, "reference": reference_id, "plot": bool(cfg.plot)}
    report = record_report(store, "compare", result, figures, parents, config)
    store.record_run(key, "compare", report.id)
    return {"id": report.id, "reused": False, **result}


def _compare_key(cfg: CompareConfig, groups: dict[str, list[Artifact]], reference_id: str | None) -> str:
    """What makes two compares identical: the resolved runs of each group, the reference, every option
    (whether a plot is drawn, not where it is written)."""
    options = {**dataclasses.asdict(cfg), "groups": list(groups), "plot": bool(cfg.plot)}
    runs = {label: sorted(run.id for run in group) for label, group in groups.items()}
    return Store.cache_key("compare", options, {"groups": runs, "reference": reference_id})


def _reuse(store: Store, key: str, plot: str | None) -> dict | None:
    """The stored result of an identical compare (its figure rewritten to `plot`), or None."""
    entry = store.lookup_run(key)
    if entry is None:
        return None
    try:
        report = store.get(entry["artifact"], kind="report")
    except CorruptArtifact:
        return None
    result = dict(report.manifest["result"])
    if plot:
        (figure,) = report.tensor_names()
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        Path(plot).write_bytes(bytes(report.tensor(figure).numpy()))
        result["plot"] = str(plot)
    return {"id": report.id, "reused": True, **result}


SIDE_KEYS = ("params", "compression", "size_bytes", "latency_ms", "latency_batch", "device", "teacher_agreement")


def summary_rows(result: dict) -> list[dict]:
    """One flat row per group (with its side-by-side facts), for the reference, and per comparison (for CSV)."""
    side = {row["label"]: row for row in result.get("side_by_side", [])}
    rows = [{"row": "group", "name": label, **{k: g[k] for k in ("n", "mean", "std", "ci_low", "ci_high")},
             **{k: side.get(label, {}).get(k) for k in SIDE_KEYS}}
            for label, g in result["groups"].items()]
    if "reference" in side:
        ref = side["reference"]
        rows.append({"row": "reference", "name": ref["id"], "n": 1, "mean": ref["mean"],
                     **{k: ref[k] for k in SIDE_KEYS}})
    keys = ("n", "mean_diff", "diff_ci_low", "diff_ci_high", "t", "t_p", "t_p_holm", "wilcoxon_p",
            "wilcoxon_p_holm", "cohens_dz", "seeds_better", "seeds_equal", "seeds_worse")
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
