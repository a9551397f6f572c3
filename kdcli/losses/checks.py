"""The soundness checks every logit loss passes: the registry's tests run them on each registered
loss, and `kdcli methods --check py:FILE.py:NAME` runs them on a user's loss.

A check takes the loss object (called as loss(student_logits (N, K), teacher_logits (N, K) | None,
labels (N,)) -> terms with a "loss" term) and whether it reads teacher logits; it returns None when
the loss passes, else one line saying what failed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Check = Callable[[object, bool], "str | None"]


def logit_batch(n: int = 16, k: int = 10, seed: int = 0, scale: float = 3.0, dtype=torch.float32):
    """Seeded student logits (N, K) (requiring grad), teacher logits (N, K) and labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_(True)
    teacher = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    return student, teacher, labels


def _terms(loss, student, teacher, labels, needs_teacher: bool) -> dict:
    terms = loss(student, teacher if needs_teacher else None, labels)
    if not isinstance(terms, dict) or "loss" not in terms:
        raise TypeError(f"returned {type(terms).__name__}, not a dict of terms with a 'loss' term")
    return terms


def _finite_with_gradients(loss, needs_teacher: bool, scale: float) -> str | None:
    student, teacher, labels = logit_batch(scale=scale)
    terms = _terms(loss, student, teacher, labels, needs_teacher)
    bad = [k for k, t in terms.items() if not (torch.is_tensor(t) and t.dim() == 0 and torch.isfinite(t))]
    if bad:
        return f"terms {', '.join(bad)} are not finite scalars"
    terms["loss"].backward()
    grad = student.grad
    if grad is None or not torch.isfinite(grad).all() or not grad.abs().sum() > 0:
        return "the loss gives the student logits no finite, non-zero gradient"
    return None


def check_finite(loss, needs_teacher: bool) -> str | None:
    """Finite scalar terms and a finite, non-zero gradient on the student, on logits of scale 3."""
    return _finite_with_gradients(loss, needs_teacher, 3.0)


def check_extreme(loss, needs_teacher: bool) -> str | None:
    """The same on logits of scale 300 (saturated softmax)."""
    return _finite_with_gradients(loss, needs_teacher, 300.0)


def check_gradcheck(loss, needs_teacher: bool) -> str | None:
    """float64 logits keep float64 and the gradient matches finite differences (torch.autograd.gradcheck)."""
    student, teacher, labels = logit_batch(n=6, k=5, dtype=torch.float64)

    def total(s):
        return _terms(loss, s, teacher, labels, needs_teacher)["loss"]

    dtype = total(student).dtype
    if dtype != torch.float64:
        return f"float64 logits give a {dtype} loss"
    if not torch.autograd.gradcheck(total, (student,), eps=1e-6, atol=1e-6, raise_exception=False):
        return "the analytic gradient disagrees with finite differences (gradcheck, float64)"
    return None


def check_teacher_frozen(loss, needs_teacher: bool) -> str | None:
    """Backward through the loss leaves no gradient on teacher logits that require one."""
    if not needs_teacher:
        return None
    student, teacher, labels = logit_batch(seed=1)
    teacher.requires_grad_(True)
    _terms(loss, student, teacher, labels, True)["loss"].backward()
    if teacher.grad is not None:
        return "the loss back-propagates into the teacher logits (detach them)"
    return None


LOGIT_CHECKS: list[tuple[str, Check]] = [
    ("finite, with gradients", check_finite),
    ("finite on extreme logits", check_extreme),
    ("float64 gradcheck", check_gradcheck),
    ("teacher not trained", check_teacher_frozen),
]


def run_checks(loss, needs_teacher: bool = True) -> list[tuple[str, str | None]]:
    """(check, None or what failed) for every check; an exception inside the loss is its failure."""
    results = []
    for name, check in LOGIT_CHECKS:
        try:
            results.append((name, check(loss, needs_teacher)))
        except Exception as exc:  # the user's loss raised: that is what the check found
            results.append((name, f"{type(exc).__name__}: {' '.join(str(exc).split())}"))
    return results
