"""`kdcli compare` on real digits runs: statistics against scipy, the alternative's mapping for a
lower-is-better metric, --require-significant exit codes, and the pairing refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats as sps

from kdcli.store import Store

FAST = ["--device", "cpu", "-q", "--lr", "0.01"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_cli):
    """weak/sN (one epoch at a learning rate too small to learn, tagged 'weak'), mid/sN (1 epoch),
    strong/sN (2 epochs) for seeds 0-2, and split/sN (weak, another --split-seed, so other data) for
    seeds 0-2. Returns (store, invoke)."""
    store = Store(tmp_path_factory.mktemp("compare") / "store")
    invoke = make_cli(store.root)

    for seed in range(3):
        untrained = ["--epochs", "1", "--lr", "1e-9"]
        for name, extra in (("weak", [*untrained, "--tag", "weak"]), ("mid", ["--epochs", "1"]),
                            ("strong", ["--epochs", "2"]), ("split", [*untrained, "--split-seed", "1"])):
            assert invoke("baseline", *FAST, *extra, "--seed", seed, "--name", f"{name}/s{seed}").exit_code == 0
    return store, invoke


def metric(store: Store, group: str, key: str = "test_acc") -> np.ndarray:
    return np.array([store.get(f"{group}/s{seed}").manifest["metrics"][key] for seed in range(3)])


def test_statistics_match_scipy(runs, tmp_path):
    store, invoke = runs
    plot, table = tmp_path / "box.png", tmp_path / "summary.csv"
    result = invoke("compare", "tag:weak", "mid/s0,mid/s1,mid/s2", "strong/*", "--label", "weak",
                    "--reference", "strong/s0", "--plot", plot, "--csv", table, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    weak, mid, strong = metric(store, "weak"), metric(store, "mid"), metric(store, "strong")
    assert out["seeds"] == [0, 1, 2] and out["baseline"] == "weak" and out["metric"] == "test_acc"
    for label, values in (("weak", weak), ("strong/*", strong)):
        g = out["groups"][label]
        low, high = sps.t.interval(0.95, 2, loc=values.mean(), scale=sps.sem(values))
        assert (g["mean"], g["std"], g["ci_low"], g["ci_high"]) == pytest.approx(
            (values.mean(), values.std(ddof=1), max(low, 0), min(high, 100)))
        assert g["ci_clipped"] == (low < 0 or high > 100)
    by_group = {c["a"]: c for c in out["comparisons"]}
    for label, values in (("mid/s0,mid/s1,mid/s2", mid), ("strong/*", strong)):
        c, d = by_group[label], values - weak
        t = sps.ttest_rel(values, weak, alternative="greater")
        ci = sps.ttest_rel(values, weak).confidence_interval(0.95)
        assert (c["mean_diff"], c["t"], c["t_p"]) == pytest.approx((d.mean(), t.statistic, t.pvalue))
        assert (c["diff_ci_low"], c["diff_ci_high"]) == pytest.approx((ci.low, ci.high))
        assert c["wilcoxon_p"] == pytest.approx(sps.wilcoxon(values, weak, alternative="greater").pvalue)
        assert c["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    p = sorted(c["t_p"] for c in out["comparisons"])
    holm = [min(1, 2 * p[0]), max(min(1, 2 * p[0]), p[1])]
    assert sorted(c["t_p_holm"] for c in out["comparisons"]) == pytest.approx(holm)
    assert out["reference"]["test_acc"] == strong[0]
    # the report artifact holds the same result and the PNG's bytes
    report = store.get(out["id"], kind="report")
    assert report.manifest["result"]["comparisons"][0]["t_p"] == out["comparisons"][0]["t_p"]
    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and bytes(report.tensor("box.png").numpy()) == png
    assert f"wrote the paired plot to {plot}" in result.stderr
    rows = list(csv.DictReader(table.open()))
    assert [r["row"] for r in rows] == ["group"] * 3 + ["reference"] + ["comparison"] * 2
    assert float(rows[1]["mean"]) == pytest.approx(mid.mean())
    assert int(float(rows[1]["params"])) == store.get("mid/s0").manifest["metrics"]["params"]
    assert rows[3]["name"] == out["reference"]["id"] and float(rows[3]["compression"]) == pytest.approx(1.0)


def test_named_report_survives_gc(runs):
    store, invoke = runs
    result = invoke("compare", "tag:weak", "strong/*", "--name", "reports/weak-vs-strong", "-q")
    assert result.exit_code == 0, result.stderr
    report_id = result.stdout.strip().splitlines()[-1]
    assert store.resolve("reports/weak-vs-strong") == report_id
    assert store.get(report_id).manifest["stage"] == "compare"
    assert report_id not in store.gc(dry_run=True)


def test_lower_is_better_metric_flips_the_alternative(runs):
    """--alternative greater means 'better': for a loss, scipy's 'less' on group - baseline."""
    store, invoke = runs
    out = json.loads(invoke("compare", "weak/*", "strong/*", "--metric", "test_loss", "--json").stdout)
    strong, weak = metric(store, "strong", "test_loss"), metric(store, "weak", "test_loss")
    (c,) = out["comparisons"]
    assert out["higher_is_better"] is False and out["scipy_alternative"] == "less"
    assert c["t_p"] == pytest.approx(sps.ttest_rel(strong, weak, alternative="less").pvalue)
    assert out["best"] == "strong/*"


def test_require_significant_exit_codes(runs):
    _, invoke = runs
    # trained (~80%) vs untrained (~10%) on every seed: significant
    assert invoke("compare", "weak/*", "strong/*", "--require-significant").exit_code == 0
    # reversed: the untrained group is not better than the trained baseline
    worse = invoke("compare", "strong/*", "weak/*", "--require-significant")
    assert worse.exit_code == 1
    assert "weak/* vs strong/*: not significant" in worse.stderr.splitlines()[-1]
    assert worse.stdout.strip()  # the report is still stored and printed
    # ... but it is significantly worse, which --alternative less asks about
    assert invoke("compare", "strong/*", "weak/*", "--alternative", "less", "--require-significant").exit_code == 0
    # the decision is about the last group: the baseline may be any of them
    assert invoke("compare", "strong/*", "weak/*", "--baseline", "1", "--require-significant").exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["strong/s0,strong/s1", "weak/*"], "seeds do not pair up: 'strong/s0,strong/s1' has seeds 0,1, 'weak/*' has 0,1,2"),
    (["strong/s0", "weak/s0"], "group 'strong/s0' has 1 run(s); each group needs at least 2"),
    (["split/*", "weak/*"], "were trained on different data"),
    (["strong/*", "weak/s0,strong/s0,weak/s1"], "several runs with seed 0"),
    (["strong/*", "nothing/*"], "no artifact names match 'nothing/*'"),
    (["strong/*", "tag:none"], "no artifacts tagged 'none'"),
    (["strong/*"], "compare needs at least 2 groups"),
    (["strong/*", "weak/*", "--baseline", "5"], "--baseline '5' is neither a group label"),
    (["strong/*", "weak/*", "--alternative", "bigger"], "--alternative must be one of two-sided, less, greater"),
    (["strong/*", "weak/*", "--level", "5"], "--level must be between 0 and 1"),
    (["strong/*", "weak/*", "--alpha", "0.01"], "compare --alpha is now --level"),
    (["strong/*", "weak/*", "--label", "a", "--label", "a"], "group labels must differ"),
    (["strong/*", "weak/*", "--metric", "test_f1"], "has no metric 'test_f1'"),
    (["sweep:strong/s0:lr=1", "weak/*"], "is a model artifact, expected a sweep"),
])
def test_refusals_are_one_line(runs, args, message):
    _, invoke = runs
    result = invoke("compare", *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_clipped_interval_is_said(runs):
    """The weak group sits near 10% with a wide spread: its t interval would go below 0."""
    _, invoke = runs
    result = invoke("compare", "weak/*", "strong/*", "--json")
    out = json.loads(result.stdout)
    clipped = [label for label, g in out["groups"].items() if g["ci_clipped"]]
    for label in clipped:
        assert f"the 95% CI of {label} is clipped to [0, 100]" in result.stderr
    assert all(0 <= g["ci_low"] <= g["ci_high"] <= 100 for g in out["groups"].values())


def test_groups_that_differ_beyond_the_method_are_named(runs):
    _, invoke = runs
    result = invoke("compare", "mid/*", "strong/*", "-q")
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    assert "differ in more than the method options" in warning and "epochs (mid/*: 1; strong/*: 2)" in warning
    assert "lr" not in warning.split(":", 2)[2].replace("epochs", "")  # mid and strong share every other key
    same = invoke("compare", "mid/*", "mid/s0,mid/s1,mid/s2", "-q")
    assert "warning:" not in same.stderr


def test_side_by_side_and_t_to_two_decimals(runs):
    store, invoke = runs
    result = invoke("compare", "weak/*", "strong/*", "--reference", "strong/s0", "--json")
    out = json.loads(result.stdout)
    rows = {row["label"]: row for row in out["side_by_side"]}
    assert list(rows) == ["weak/*", "strong/*", "reference"]
    teacher = store.get("strong/s0")
    params = teacher.manifest["metrics"]["params"]
    for row in rows.values():
        assert row["params"] == params and row["compression"] == pytest.approx(1.0)
        assert row["latency_batch"] == 64 and row["device"] == "cpu" and row["latency_ms"] > 0
    assert rows["reference"]["size_bytes"] == sum(t.numel() * t.element_size() for t in teacher.tensors().values())
    assert rows["reference"]["mean"] == teacher.manifest["metrics"]["test_acc"]
    assert rows["strong/*"]["mean"] == pytest.approx(metric(store, "strong").mean())
    (c,) = out["comparisons"]
    table = invoke("compare", "weak/*", "strong/*", "--reference", "strong/s0").stderr
    assert f" {c['t']:.2f} " in table and "ms per batch of 64 on cpu" in table and "1.0x" in table, table


def test_identical_compare_reuses_its_report(runs, tmp_path):
    store, invoke = runs
    args = ["compare", "mid/*", "strong/*", "--alternative", "two-sided", "--plot"]
    first = invoke(*args, tmp_path / "a.png", "-q")
    reports = [i for i in store.ids() if store.read_manifest(i).get("kind") == "report"]
    second = invoke(*args, tmp_path / "b.png")
    assert second.exit_code == 0 and second.stdout == first.stdout
    assert "reused report" in second.stderr
    assert [i for i in store.ids() if store.read_manifest(i).get("kind") == "report"] == reports
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    other = invoke("compare", "mid/*", "strong/*", "--alternative", "greater", "-q")
    assert other.stdout != first.stdout


def test_across_data_pairs_runs_tested_on_one_test_split(runs):
    """Runs trained on another split (or a data-free student's synthetic set) share the test split:
    refused by default with the way out named, compared with a warning under --across-data."""
    _, invoke = runs
    refused = invoke("compare", "split/*", "weak/*")
    assert refused.exit_code == 2 and "they share one test split: --across-data compares them" in refused.stderr
    result = invoke("compare", "split/*", "weak/*", "--across-data", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert any("trained on different data" in w and "tested on the same test split" in w for w in report["warnings"])
    assert "tested on the same test split" in result.stderr


def test_the_per_seed_table_shows_each_pair(runs):
    _, invoke = runs
    result = invoke("compare", "weak/*", "strong/*", "--json")
    report = json.loads(result.stdout)
    assert "test_acc per seed" in result.stderr
    for i, seed in enumerate(report["seeds"]):
        row = next(line for line in result.stderr.splitlines() if line.strip().startswith(f"{seed} "))
        assert f"{report['groups']['strong/*']['values'][i]:.4g}" in row
    c = report["comparisons"][0]
    assert (c["seeds_better"], c["seeds_equal"], c["seeds_worse"]) == (len(report["seeds"]), 0, 0)  # trained vs untrained
