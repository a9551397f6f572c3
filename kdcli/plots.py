"""Figures for reports: paired seeds across groups, grid search, temperature effects, training curves.

Each function draws one titled figure with labelled axes, writes it to `out` as PNG (creating the
folder), closes it and returns the path. Headless: the Agg backend is selected on import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from kdcli.errors import UsageError  # noqa: E402
from kdcli.stats import softmax, softmax_entropy  # noqa: E402

DPI = 120
METRIC_LABELS = {"val_acc": ("Validation accuracy", "accuracy"), "val_mse": ("Validation MSE", "MSE")}


@contextlib.contextmanager
def _figure(out, **subplots) -> Iterator[tuple[plt.Figure, np.ndarray]]:
    """Yield (figure, 1-D array of axes); on success save as PNG to `out`; always close."""
    fig, axes = plt.subplots(squeeze=False, **subplots)
    try:
        yield fig, axes.reshape(-1)
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _same_length(**columns: Sequence) -> None:
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) != 1:
        raise UsageError("lengths differ: " + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    if not next(iter(lengths.values())):
        raise UsageError("nothing to plot")


def _tilt_labels(ax, labels: Sequence[str]) -> None:
    if max(len(s) for s in labels) * len(labels) > 60:
        for label in ax.get_xticklabels():
            label.set_rotation(25)
            label.set_horizontalalignment("right")


def paired_plot(groups: dict[str, Sequence[float]], seeds: Sequence[int], differences: dict[str, dict],
                metric: str, out, reference: float | None = None, reference_label: str = "teacher") -> Path:
    """The pairing a paired test uses, in two panels.

    Left: each group's value per seed, one line per seed from group to group (the group means in black),
    and an optional reference line. Right: per comparison, the per-seed differences and their mean with
    its confidence interval, against zero. `differences[label]` = {"values", "mean", "low", "high"}.
    """
    if not groups or not seeds:
        raise UsageError("nothing to plot: no groups or seeds")
    names = list(groups)
    data = np.array([np.asarray(groups[name], dtype=float) for name in names])  # (groups, seeds)
    if data.shape[1] != len(seeds):
        raise UsageError(f"{data.shape[1]} values per group for {len(seeds)} seeds")
    x = np.arange(len(names))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    with _figure(out, ncols=2, figsize=(max(11.0, 2.2 * len(names) + 6), 5)) as (fig, (left, right)):
        for j, seed in enumerate(seeds):
            left.plot(x, data[:, j], marker="o", color=colors[j % len(colors)], alpha=0.8, label=f"seed {seed}")
        left.plot(x, data.mean(axis=1), marker="D", color="black", linestyle="none", markersize=8, label="mean")
        if reference is not None:
            left.axhline(reference, color="tab:red", linestyle="--", label=f"{reference_label} ({reference:.4g})")
        left.set_xticks(x, names)
        left.set_title(f"{metric} per seed, paired from group to group")
        left.set_xlabel("group")
        left.set_ylabel(metric)
        left.grid(True, axis="y", linestyle="--", alpha=0.5)
        left.legend(fontsize=8)
        _tilt_labels(left, names)
        labels = list(differences)
        for i, label in enumerate(labels):
            d = differences[label]
            values = np.asarray(d["values"], dtype=float)
            offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            right.scatter(i + offsets, values, s=26, c=[colors[j % len(colors)] for j in range(len(values))],
                          alpha=0.9, zorder=3, label="per-seed difference (colours: seeds)" if i == 0 else None)
            low, high = d["low"], d["high"]
            if np.isfinite(low) and np.isfinite(high):
                right.errorbar([i + 0.3], [d["mean"]], yerr=[[d["mean"] - low], [high - d["mean"]]], fmt="D",
                               color="black", capsize=6, label="mean, 95% CI" if i == 0 else None)
            else:
                right.scatter([i + 0.3], [d["mean"]], marker="D", color="black", label="mean" if i == 0 else None)
        right.axhline(0.0, color="grey", linewidth=1)
        right.set_xticks(np.arange(len(labels)), labels)
        right.set_xlim(-0.6, len(labels) - 0.2)
        right.set_title("paired difference (group - baseline) per seed")
        right.set_xlabel("comparison")
        right.set_ylabel(f"difference in {metric}")
        right.grid(True, axis="y", linestyle="--", alpha=0.5)
        if labels:
            right.legend(fontsize=8)
        _tilt_labels(right, labels)
    return Path(out)


def grid_bar_chart(points: Sequence[str], means: Sequence[float], stds: Sequence[float], metric: str,
                   out) -> Path:
    """Mean metric per grid point as bars, with one-std error bars."""
    _same_length(points=points, means=means, stds=stds)
    x = np.arange(len(points))
    with _figure(out, figsize=(max(6.0, 0.9 * len(points) + 2), 5)) as (fig, (ax,)):
        ax.bar(x, means, yerr=stds, capsize=5, color="tab:blue", alpha=0.8, ecolor="black")
        ax.set_xticks(x, [str(p) for p in points])
        ax.set_title(f"Grid search: mean {metric} (error bars: ±1 std over seeds)")
        ax.set_xlabel("grid point")
        ax.set_ylabel(metric)
        ax.grid(True, axis="y", linestyle="--", alpha=0.5)
        _tilt_labels(ax, [str(p) for p in points])
    return Path(out)


def size_quality(labels: Sequence[str], sizes: Sequence[float], means: Sequence[float], stds: Sequence[float],
                 metric: str, out, lines: dict[str, float] | None = None) -> Path:
    """A metric (mean ± 1 std over seeds) against a table's bytes per position (log scale), one labelled
    point per table, with horizontal lines for runs that have no table (baseline, online teacher)."""
    _same_length(labels=labels, sizes=sizes, means=means, stds=stds)
    with _figure(out, figsize=(9, 5.5)) as (fig, (ax,)):
        ax.errorbar(sizes, means, yerr=stds, fmt="o", capsize=4, color="tab:blue", label="cached table")
        for number, (label, x, y) in enumerate(zip(labels, sizes, means)):  # alternate sides: close points
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4 if number % 2 else -11), fontsize=8)
        for (label, value), color in zip((lines or {}).items(), ("tab:red", "tab:green", "tab:purple", "tab:gray")):
            ax.axhline(value, color=color, linestyle="--", label=f"{label} ({value:.4g})")
        ax.set_xscale("log")
        ax.set_title(f"{metric} against the teacher table's size (error bars: ±1 std over seeds)")
        ax.set_xlabel("table bytes per position (log scale)")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return Path(out)


def temperature_curve(temperatures: Sequence[float], means: Sequence[float], stds: Sequence[float],
                      metric: str, out, baseline: float | None = None, teacher: float | None = None) -> Path:
    """Metric against distillation temperature (±1 std), with baseline and teacher lines."""
    _same_length(temperatures=temperatures, means=means, stds=stds)
    with _figure(out, figsize=(8, 5)) as (fig, (ax,)):
        ax.errorbar(temperatures, means, yerr=stds, fmt="o-", capsize=4, color="tab:blue", label="distilled student")
        if baseline is not None:
            ax.axhline(baseline, color="tab:red", linestyle="--", label=f"baseline ({baseline:.4g})")
        if teacher is not None:
            ax.axhline(teacher, color="tab:green", linestyle="--", label=f"teacher ({teacher:.4g})")
        ax.set_xticks(list(temperatures))
        ax.set_title(f"Effect of temperature on {metric}")
        ax.set_xlabel("temperature T")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    return Path(out)


def temperature_bars(logits, temperatures: Sequence[float], true_class: int | None,
                     class_names: Sequence[str] | None, out) -> Path:
    """One panel per T of softmax(z / T): true class in salmon, a different prediction in light green."""
    if not temperatures:
        raise UsageError("nothing to plot: no temperatures")
    probs = [softmax(logits, t) for t in temperatures]
    entropies = softmax_entropy(logits, temperatures)
    k = probs[0].size
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise UsageError(f"{len(names)} class names for {k} logits")
    if true_class is not None and not 0 <= true_class < k:
        raise UsageError(f"true class {true_class} is out of range for {k} classes")
    predicted = int(np.argmax(probs[0]))  # the same at every T > 0
    x = np.arange(k)
    width = max(4.0, min(0.45 * k, 12.0))
    ticks = x[:: -(-k // 25)]  # at most 25 tick labels per panel
    with _figure(out, ncols=len(temperatures), sharey=True, figsize=(width * len(temperatures), 4.5)) as (fig, axes):
        for ax, t, p, h in zip(axes, temperatures, probs, entropies, strict=True):
            bars = ax.bar(x, p, color="skyblue")
            if true_class is not None:
                bars[true_class].set_color("salmon")
            if predicted != true_class:
                bars[predicted].set_color("lightgreen")
            labelled = x if k <= 20 else {predicted, true_class} - {None}
            for i in labelled:
                y = float(p[i])
                top = y > 0.9
                ax.text(i, y - 0.02 if top else y + 0.02, f"{y:.3f}", ha="center", va="top" if top else "bottom",
                        fontsize=8, rotation=90 if k > 10 else 0)
            ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if k > 10 else 0, fontsize=8 if k > 10 else 10)
            ax.set_ylim(0, 1)
            ax.set_title(f"T={t:g}  (entropy {h:.2f} nats)")
            ax.set_xlabel("class")
        axes[0].set_ylabel("probability")
        legend = [Patch(color="salmon", label="true class")] if true_class is not None else []
        if predicted != true_class:
            legend.append(Patch(color="lightgreen", label="predicted class"))
        if legend:
            axes[-1].legend(handles=legend, loc="upper right")
        truth = f" (true class: {names[true_class]})" if true_class is not None else ""
        fig.suptitle(f"Effect of temperature on the teacher's softmax{truth}")
    return Path(out)


def token_bars(probabilities: Sequence[Sequence[float]], tokens: Sequence[str], temperatures: Sequence[float],
               out, title: str) -> Path:
    """One panel per T: the probabilities softmax(z / T) (over the whole vocabulary) of the same few
    tokens, the most likely at T = 1 first."""
    _same_length(temperatures=temperatures, probabilities=probabilities)
    x = np.arange(len(tokens))
    width = max(4.0, min(0.5 * len(tokens), 10.0))
    with _figure(out, ncols=len(temperatures), sharey=True, figsize=(width * len(temperatures), 4.5)) as (fig, axes):
        for ax, t, p in zip(axes, temperatures, probabilities, strict=True):
            ax.bar(x, p, color="skyblue")
            ax.set_xticks(x, list(tokens), rotation=90, fontsize=9)
            ax.set_ylim(0, 1)
            ax.set_title(f"T={t:g}")
        axes[0].set_ylabel("probability")
        fig.suptitle(f"Next-token distribution {title}")
    return Path(out)


def _series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    rows = [(row.get("epoch", i + 1), row[key]) for i, row in enumerate(history) if row.get(key) is not None]
    return [r[0] for r in rows], [r[1] for r in rows]


def training_curves(histories: dict[str, Sequence[dict]], out) -> Path:
    """Loss (train solid, val dashed) and validation accuracy, or val MSE, per epoch; one colour per run."""
    if not histories:
        raise UsageError("nothing to plot: no training histories")
    rows = [row for history in histories.values() for row in history]
    metric = next((m for m in ("val_acc", "val_mse") if any(m in row for row in rows)), None)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    with _figure(out, ncols=2, figsize=(13, 4.8)) as (fig, (loss_ax, metric_ax)):
        for i, (name, history) in enumerate(histories.items()):
            color = colors[i % len(colors)]
            loss_ax.plot(*_series(history, "train_loss"), color=color, label=f"{name} train")
            loss_ax.plot(*_series(history, "val_loss"), color=color, linestyle="--", label=f"{name} val")
            if metric is not None:
                metric_ax.plot(*_series(history, metric), color=color, marker="o", markersize=3, label=name)
        loss_ax.set_title("Loss per epoch")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss")
        loss_ax.legend(fontsize=8)
        title, ylabel = METRIC_LABELS.get(metric, ("No validation metric", "value"))
        metric_ax.set_title(title)
        metric_ax.set_xlabel("epoch")
        metric_ax.set_ylabel(ylabel)
        if metric is not None:
            metric_ax.legend(fontsize=8)
        for ax in (loss_ax, metric_ax):
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(f"Training curves ({len(histories)} run{'s' if len(histories) != 1 else ''})")
    return Path(out)


def image_grid(images: np.ndarray, labels: Sequence[int], class_names: Sequence[str], per_class: int, out,
               title: str) -> Path:
    """A grid of images (N, C, H, W) with values in [0, 1]: one row per class (its first `per_class`
    images by `labels`), grey for one channel, RGB for three."""
    if not len(images):
        raise UsageError("nothing to plot: no images")
    labels = np.asarray(labels)
    rows = len(class_names)
    with _figure(out, nrows=rows, ncols=per_class, figsize=(1.1 * per_class + 1, 1.1 * rows + 0.6)) as (fig, axes):
        for row, name in enumerate(class_names):
            chosen = np.flatnonzero(labels == row)[:per_class]
            for column in range(per_class):
                ax = axes[row * per_class + column]
                ax.set_xticks([])
                ax.set_yticks([])
                if column < len(chosen):
                    image = images[chosen[column]]
                    shown = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
                    ax.imshow(shown, cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
                else:
                    ax.axis("off")
                if column == 0:
                    ax.set_ylabel(f"{name} ({len(np.flatnonzero(labels == row))})", fontsize=8)
        fig.suptitle(title, fontsize=10)
    return Path(out)
