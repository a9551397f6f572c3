"""Statistics for comparing runs across seeds: t intervals, paired tests, Holm correction, entropy.

Pure functions over lists of numbers; every result is a dict of plain Python floats, ints, strings
and lists, so it can go straight into a JSON report. Degenerate inputs (one pair, identical samples)
give NaN or inf with a note instead of an exception; inputs no test can use raise UsageError.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import special
from scipy import stats as sps

from kdcli.errors import UsageError

ALTERNATIVES = ("two-sided", "less", "greater")


def _values(values, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise UsageError(f"{name}: no values")
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"{name}: values must be finite numbers")
    return arr


def _check(confidence: float, alternative: str = "two-sided") -> None:
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must be between 0 and 1, got {confidence}")
    if alternative not in ALTERNATIVES:
        raise UsageError(f"unknown alternative {alternative!r}; choose one of {', '.join(ALTERNATIVES)}")


def _t_interval(x: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """Mean, std (ddof=1) and the two-sided Student-t interval of the mean; NaN spread when n < 2."""
    n, mean = x.size, float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def describe(values: Sequence[float], confidence: float = 0.95,
             bounds: tuple[float, float] | None = None) -> dict:
    """n, mean, std (ddof=1) and the Student-t confidence interval of the mean.

    With `bounds` (e.g. (0, 100) for an accuracy in %), an interval reaching past them is clipped to
    them and `ci_clipped` says so: the t interval knows nothing of a bounded scale."""
    _check(confidence)
    x = _values(values)
    mean, std, low, high = _t_interval(x, confidence)
    out = {"n": int(x.size), "mean": mean, "std": std, "ci_low": low, "ci_high": high, "ci_clipped": False}
    if bounds is not None and not math.isnan(low):
        out["ci_low"], out["ci_high"] = max(low, bounds[0]), min(high, bounds[1])
        out["ci_clipped"] = (out["ci_low"], out["ci_high"]) != (low, high)
    return out


def paired_comparison(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided",
                      confidence: float = 0.95) -> dict:
    """Paired t-test, Wilcoxon signed-rank test and Cohen's d_z of a - b (same seeds, same order).

    `alternative` is scipy's, about a - b: "greater" tests whether a is larger. The interval of the
    mean difference is always two-sided.
    """
    _check(confidence, alternative)
    x, y = _values(a, "a"), _values(b, "b")
    if x.size != y.size:
        raise UsageError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    d = x - y
    n = int(d.size)
    mean_diff, std_diff, low, high = _t_interval(d, confidence)
    out = {"n": n, "mean_a": float(x.mean()), "mean_b": float(y.mean()), "mean_diff": mean_diff,
           "std_diff": std_diff, "diff_ci_low": low, "diff_ci_high": high, "confidence": confidence,
           "alternative": alternative, "t": math.nan, "t_p": math.nan, "wilcoxon": math.nan,
           "wilcoxon_p": math.nan, "cohens_dz": math.nan, "notes": []}
    if n < 2:
        out["notes"].append(f"{n} pair: no test possible")
        return out
    nonzero = int(np.count_nonzero(d))
    with warnings.catch_warnings():  # scipy warns on constant differences; those cases are noted below
        warnings.simplefilter("ignore", RuntimeWarning)
        t = sps.ttest_rel(x, y, alternative=alternative)
        out["t"], out["t_p"] = float(t.statistic), float(t.pvalue)
        if nonzero == 0:
            out["wilcoxon"], out["wilcoxon_p"] = 0.0, 1.0
        elif nonzero >= 2:
            w = sps.wilcoxon(x, y, alternative=alternative)
            out["wilcoxon"], out["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
    if std_diff == 0:
        out["cohens_dz"] = math.nan if mean_diff == 0 else math.copysign(math.inf, mean_diff)
        out["notes"].append("all differences are zero" if mean_diff == 0 else "all differences are equal")
    else:
        out["cohens_dz"] = mean_diff / std_diff
    if 0 < nonzero < 2:
        out["notes"].append("Wilcoxon needs at least 2 non-zero differences")
    elif 0 < nonzero < n:
        out["notes"].append(f"Wilcoxon dropped {n - nonzero} zero difference(s)")
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values in input order; NaN stays NaN and does not count in m."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    adjusted = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def compare_groups(groups: dict[str, Sequence[float]], baseline: str | None = None,
                   alternative: str = "two-sided", higher_is_better: bool = True,
                   confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Describe each group (one value per seed) and test it against `baseline`, or every pair.

    Each comparison is group a minus group b (a = the non-baseline group). With more than one
    comparison the t and Wilcoxon p-values are Holm-adjusted (`t_p_holm`, `wilcoxon_p_holm`).
    `higher_is_better` only decides `best` and each comparison's `better`; `bounds` clips each group's
    interval to the metric's range (see `describe`).
    """
    _check(confidence, alternative)
    if len(groups) < 2:
        raise UsageError(f"need at least 2 groups to compare, got {len(groups)}")
    if baseline is not None and baseline not in groups:
        raise UsageError(f"baseline {baseline!r} is not one of the groups: {', '.join(groups)}")
    arrays = {name: _values(v, name) for name, v in groups.items()}
    for name, x in arrays.items():
        if x.size < 2:
            raise UsageError(f"group {name!r} has {x.size} value(s); each group needs at least 2 (one per seed)")
    sizes = {x.size for x in arrays.values()}
    if len(sizes) > 1:
        counts = ", ".join(f"{name}={x.size}" for name, x in arrays.items())
        raise UsageError(f"groups must have the same number of paired values (seeds): {counts}")

    if baseline is None:
        pairs = list(itertools.combinations(arrays, 2))
    else:
        pairs = [(name, baseline) for name in arrays if name != baseline]
    sign = 1.0 if higher_is_better else -1.0
    comparisons = []
    for a, b in pairs:
        c = {"a": a, "b": b, **paired_comparison(arrays[a], arrays[b], alternative, confidence)}
        c["better"] = None if c["mean_diff"] == 0 else (a if sign * c["mean_diff"] > 0 else b)
        comparisons.append(c)
    for key in ("t_p", "wilcoxon_p"):
        for c, p in zip(comparisons, holm([c[key] for c in comparisons]), strict=True):
            c[f"{key}_holm"] = p

    described = {name: describe(x, confidence, bounds) for name, x in arrays.items()}
    best = max(described, key=lambda name: sign * described[name]["mean"])
    return {"baseline": baseline, "alternative": alternative, "higher_is_better": higher_is_better,
            "confidence": confidence, "correction": "holm" if len(comparisons) > 1 else "none",
            "best": best, "groups": described, "comparisons": comparisons}


def _logits(logits) -> np.ndarray:
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64).squeeze()
    if z.ndim != 1 or z.size < 2:
        raise UsageError(f"expected one vector of class logits, got shape {np.shape(logits)}")
    return z


def _temperature(t: float) -> float:
    if not t > 0:
        raise UsageError(f"temperature must be positive, got {t}")
    return float(t)


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) of one logit vector (tensor or array of shape (K,) or (1, K))."""
    return special.softmax(_logits(logits) / _temperature(temperature))


def softmax_entropy(logits, temperatures: Sequence[float]) -> list[float]:
    """Entropy in nats of softmax(z / T) for each T; rises from near 0 towards log K as T grows."""
    z = _logits(logits)
    out = []
    for t in temperatures:
        logp = special.log_softmax(z / _temperature(t))
        out.append(float(-(np.exp(logp) * logp).sum()))
    return out
