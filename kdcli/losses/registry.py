"""The logit-loss registry and the base every logit loss shares (torchtune's shape).

A loss is an object built from its params and called on one batch:

    loss = LOSSES.get("kd")(alpha=0.5, temperature=4.0)
    terms = loss(student_logits (N, K), teacher_logits (N, K) | None, labels (N,))

`terms` maps names to scalars and holds "loss", their weighted total. Every loss computes in its
inputs' dtype, at least float32 (fp16/bf16 logits are upcast), and never back-propagates into the
teacher. A schedule changes a param between epochs with `dataclasses.replace(loss, name=value)`.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from kdcli.losses.sparse import SparseTarget
from kdcli.registry import Registry

LOSSES: Registry = Registry("loss")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a loss computes in: its inputs' promoted dtype, float32 at least."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def upcast(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` in `dtype` (default: its own, float32 at least)."""
    return tensor.to(dtype or compute_dtype(tensor))


@dataclass
class LogitLoss(abc.ABC):
    """Base of the logit losses: subclasses are dataclasses whose fields are their params and
    implement `terms(student_logits, teacher_logits, labels)` on upcast, teacher-detached logits."""

    needs_teacher: ClassVar[bool] = True
    reads_sparse: ClassVar[bool] = False  # terms() takes a SparseTarget itself (else a top-k one is densified)
    needs_full_distribution: ClassVar[bool] = False  # the teacher at every token: online or a full table
    name: ClassVar[str] = ""

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                 labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if teacher_logits is None:
            if self.needs_teacher:
                raise ValueError(f"loss {self.name!r} needs teacher logits")
            return self.terms(upcast(student_logits), None, labels)
        if isinstance(teacher_logits, SparseTarget):
            if self.reads_sparse:
                return self.terms(upcast(student_logits), teacher_logits, labels)
            teacher_logits = teacher_logits.dense()
        dtype = compute_dtype(student_logits, teacher_logits)
        return self.terms(upcast(student_logits, dtype), upcast(teacher_logits.detach(), dtype), labels)

    @abc.abstractmethod
    def terms(self, student_logits, teacher_logits, labels) -> dict[str, torch.Tensor]:
        """The named terms, "loss" among them, of (B, K) logits and (B,) labels."""

    @classmethod
    def options(cls) -> dict:
        """The params a user sets (config options), with their defaults."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.metadata.get("option", True)}

    @classmethod
    def summary(cls) -> str:
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def register_loss(name: str):
    """Class decorator: register a LogitLoss subclass under `name`."""

    def decorate(cls):
        cls.name = name
        return LOSSES.register(name)(cls)

    return decorate
