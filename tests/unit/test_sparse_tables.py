"""The language-model tables' losses: top-k with and without tail against dense hand computations, the
sampled table's importance-weighted estimator against the full-table forward-KL gradient, and the
refusals of --table specs and of divergences a table cannot serve."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdcli.errors import UsageError
from kdcli.losses import LOSSES
from kdcli.losses.kd import soft_kl
from kdcli.losses.sparse import sparse_forward_kl
from kdcli.stages.token_tables import TableSpec, TokenTable

V, L = 12, 5


def teacher_logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, L, V, generator=torch.Generator().manual_seed(seed)) * 2


def table(spec: str, logits: torch.Tensor) -> TokenTable:
    return TokenTable(TableSpec.parse(spec, V).encode(logits), V, torch.device("cpu"))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_with_tail_is_exact_against_the_dense_completion(temperature):
    logits = teacher_logits()
    target = table("topk:4", logits).lookup(torch.tensor([0]))
    student = torch.randn(1, L, V)
    dense = target.dense()  # the completed distribution: the tail spread evenly over the V - 4 left out
    assert dense.exp().sum(-1).sub(1).abs().max() < 1e-5
    sparse = sparse_forward_kl(student[0], target[0], temperature)
    assert sparse.item() == pytest.approx(soft_kl(student[0], dense[0], temperature).item(), rel=1e-5)


def test_topk_without_tail_renormalizes_the_k_entries():
    logits = teacher_logits(1)
    target = table("topk:3,notail", logits).lookup(torch.tensor([0]))[0]
    p = torch.softmax(logits[0], -1)
    top, ids = p.topk(3, -1)
    renorm = top / top.sum(-1, keepdim=True)  # by hand: the K entries scaled to sum to one, the rest zero
    student = torch.randn(L, V)
    log_q = F.log_softmax(student, -1).gather(-1, ids)
    by_hand = (renorm * (renorm.log() - log_q)).sum(-1).mean()
    assert sparse_forward_kl(student, target, 1.0).item() == pytest.approx(by_hand.item(), rel=2e-3)  # fp16 table


@pytest.mark.parametrize("spec", ["sample:8", "sample:8,0.7"])
def test_the_sampled_estimator_has_the_full_tables_gradient_in_expectation(spec):
    """Over R independent tables (R windows of one teacher row), the mean gradient of the sampled loss
    w.r.t. the student's logits equals q - p, the full-table forward-KL gradient, within 5 standard
    errors per coordinate (the standard error measured from the R draws themselves, ~ 1 / sqrt(R N))."""
    draws = 4000
    row = teacher_logits(2)[0, 0]
    logits = row.expand(draws, 1, V).clone()  # window i draws with its own seed: R independent tables
    target = table(spec, logits).lookup(torch.arange(draws))[:, 0]
    student = torch.randn(V, generator=torch.Generator().manual_seed(3))
    z = student.expand(draws, V).clone().requires_grad_(True)
    (sparse_forward_kl(z, target, 1.0) * draws).backward()  # per-row gradients (the loss is a row mean)
    grads = z.grad.double()
    z_full = student.clone().requires_grad_(True)
    soft_kl(z_full[None], torch.log_softmax(row, -1)[None], 1.0).backward()
    expected = z_full.grad.double()
    assert torch.allclose(expected, torch.softmax(student, -1).double() - torch.softmax(row, -1).double(), atol=1e-6)
    standard_error = grads.std(0) / math.sqrt(draws)
    assert bool(((grads.mean(0) - expected).abs() <= 5 * standard_error + 1e-3).all())
    assert float(standard_error.max()) < 0.01  # the test can fail: the tolerance is tight at this R


def test_table_specs_out_of_range_are_refused():
    for spec, words in [("topk:0", "between 1"), ("topk:12", "between 1"), ("topk:4,half", "notail"),
                        ("sample:0", "between 1"), ("sample:8,0", "> 0"), ("sample:x", "number"),
                        ("random:4", "use topk")]:
        with pytest.raises(UsageError, match=words):
            TableSpec.parse(spec, V)
    assert TableSpec.parse("topk:4,tail", V).spec() == "topk:4"  # the tail variant is plain topk:K


def test_divergences_a_sparse_table_cannot_serve_are_refused():
    for spec in ("topk:4", "topk:4,notail", "sample:8"):
        for method in ("rkl", "jsd"):
            with pytest.raises(UsageError, match="full distribution"):
                TableSpec.parse(spec, V).check_serves(LOSSES.get(method), 1.0)
    with pytest.raises(UsageError, match="--temperature 1"):
        TableSpec.parse("sample:8", V).check_serves(LOSSES.get("kd"), 2.0)
    with pytest.raises(UsageError, match="--method kd"):
        TableSpec.parse("sample:8", V).check_serves(LOSSES.get("dkd"), 1.0)
    TableSpec.parse("full", V).check_serves(LOSSES.get("jsd"), 1.0)
    TableSpec.parse("topk:4", V).check_serves(LOSSES.get("kd"), 4.0)


def test_bytes_per_position():
    assert TableSpec.parse("topk:4", 300).bytes_per_position(300) == 4 * 4 + 2
    assert TableSpec.parse("topk:4,notail", 300).bytes_per_position(300) == 4 * 4
    assert TableSpec.parse("sample:8", 300).bytes_per_position(300) == 8 * (2 + 1 + 2)
    assert TableSpec.parse("sample:8,0.5", 300).bytes_per_position(300) == 8 * (2 + 1 + 2 + 2)
    tensors = TableSpec.parse("sample:8,0.5", V).encode(teacher_logits())
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == L * 8 * (1 + 1 + 2 + 2)
