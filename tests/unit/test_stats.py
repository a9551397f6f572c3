import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from kdcli.errors import UsageError
from kdcli.stats import compare_groups, describe, holm, paired_comparison, softmax, softmax_entropy

A = [1, 2, 3, 4, 5]
B = [1.5, 2.1, 3.3, 4.0, 5.9]  # differences -0.5 -0.1 -0.3 0 -0.9: mean -0.36, sd sqrt(0.128)


def plain(obj):
    """True when obj holds only built-in types (no numpy scalars)."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(plain(v) for v in obj)
    return obj is None or type(obj) in (bool, int, float, str)


def test_describe_by_hand():
    d = describe(A)
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * s / sqrt(n)
    assert d["n"] == 5 and d["mean"] == 3.0
    assert d["std"] == pytest.approx(math.sqrt(2.5))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((3 - half, 3 + half))
    assert plain(d)


def test_describe_confidence_and_single_value():
    assert describe(A, confidence=0.99)["ci_low"] < describe(A)["ci_low"]
    one = describe([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    with pytest.raises(UsageError):
        describe([])
    with pytest.raises(UsageError):
        describe(A, confidence=95)


def test_paired_comparison_by_hand_and_scipy():
    r = paired_comparison(A, B)
    sd = math.sqrt(0.128)
    assert r["n"] == 5 and r["mean_a"] == 3.0 and r["mean_b"] == pytest.approx(3.36)
    assert r["mean_diff"] == pytest.approx(-0.36)
    assert r["t"] == pytest.approx(-2.25)  # -0.36 / (sd / sqrt(5)) = -0.36 / 0.16
    assert r["cohens_dz"] == pytest.approx(-0.36 / sd)
    ci = sps.ttest_rel(A, B).confidence_interval(0.95)
    assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["t_p"] == pytest.approx(sps.ttest_rel(A, B).pvalue)
    # the zero difference is dropped; all 4 others negative: W = 0, exact p = 2 / 2**4
    assert r["wilcoxon"] == 0.0 and r["wilcoxon_p"] == pytest.approx(0.125)
    assert any("dropped 1 zero" in note for note in r["notes"])
    assert plain(r)


@pytest.mark.parametrize("alternative", ["less", "greater"])
def test_paired_comparison_one_sided(alternative):
    r = paired_comparison(A, B, alternative=alternative)
    assert r["t_p"] == pytest.approx(sps.ttest_rel(A, B, alternative=alternative).pvalue)
    assert r["wilcoxon_p"] == pytest.approx(sps.wilcoxon(A, B, alternative=alternative).pvalue)
    assert (r["t_p"] < 0.5) == (alternative == "less")


def test_paired_comparison_degenerate_cases():
    same = paired_comparison(A, A)
    assert math.isnan(same["t"]) and math.isnan(same["cohens_dz"])
    assert same["wilcoxon"] == 0.0 and same["wilcoxon_p"] == 1.0
    assert "all differences are zero" in same["notes"]

    shifted = paired_comparison([x + 1 for x in A], A)
    assert shifted["cohens_dz"] == math.inf and shifted["t_p"] == 0.0

    one = paired_comparison([1.0], [2.0])
    assert one["mean_diff"] == -1.0 and math.isnan(one["t_p"]) and math.isnan(one["wilcoxon_p"])
    assert one["notes"]
    json.dumps(same), json.dumps(one)

    with pytest.raises(UsageError, match="equal lengths"):
        paired_comparison(A, B[:4])
    with pytest.raises(UsageError, match="alternative"):
        paired_comparison(A, B, alternative="bigger")


def test_holm_hand_worked():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2]
    assert holm([]) == []
    adjusted = holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


def test_compare_groups_against_baseline():
    groups = {"baseline": B, "kd": A, "kd_t4": [x + 0.1 for x in A]}
    r = compare_groups(groups, baseline="baseline", higher_is_better=False)
    assert [(c["a"], c["b"]) for c in r["comparisons"]] == [("kd", "baseline"), ("kd_t4", "baseline")]
    assert r["correction"] == "holm" and r["best"] == "kd"
    assert r["groups"]["kd"] == describe(A)
    raw = [c["t_p"] for c in r["comparisons"]]
    assert [c["t_p_holm"] for c in r["comparisons"]] == pytest.approx(holm(raw))
    assert all(c["better"] == c["a"] for c in r["comparisons"])  # lower is better and a < baseline
    assert plain(r)
    json.dumps(r)


def test_compare_groups_all_pairs_and_two_groups():
    r = compare_groups({"x": A, "y": B, "z": [2, 3, 4, 5, 7]}, baseline=None)
    assert [(c["a"], c["b"]) for c in r["comparisons"]] == [("x", "y"), ("x", "z"), ("y", "z")]
    assert r["best"] == "z"
    two = compare_groups({"kd": A, "base": B}, baseline="base", alternative="less")
    (c,) = two["comparisons"]
    assert two["correction"] == "none" and c["t_p_holm"] == c["t_p"]
    assert c["t_p"] == pytest.approx(sps.ttest_rel(A, B, alternative="less").pvalue)


@pytest.mark.parametrize("groups, baseline, message", [
    ({"a": A, "b": B[:4]}, None, "same number"),
    ({"a": [1.0], "b": [2.0]}, None, "at least 2"),
    ({"a": A}, None, "at least 2 groups"),
    ({"a": A, "b": B}, "c", "baseline 'c'"),
    ({"a": A, "b": [1, 2, 3, 4, float("nan")]}, None, "finite"),
])
def test_compare_groups_refuses_bad_groups(groups, baseline, message):
    with pytest.raises(UsageError, match=message) as info:
        compare_groups(groups, baseline=baseline)
    assert "\n" not in str(info.value)


def test_softmax_entropy():
    k = 10
    assert softmax_entropy(np.zeros(k), [1.0, 5.0]) == pytest.approx([math.log(k)] * 2)
    z = torch.tensor([[3.0, 1.0, 0.2, -1.0]])
    temps = [1, 2, 4, 10]
    h = softmax_entropy(z, temps)
    assert h == pytest.approx([sps.entropy(softmax(z, t)) for t in temps])
    assert h == sorted(h) and h[-1] < math.log(4)
    assert softmax(z, 2.0).sum() == pytest.approx(1.0)
    assert softmax_entropy(np.array([1000.0, 0.0]), [1.0]) == pytest.approx([0.0], abs=1e-12)
    with pytest.raises(UsageError):
        softmax_entropy(z, [0.0])
    with pytest.raises(UsageError):
        softmax_entropy(torch.zeros(2, 3), [1.0])
