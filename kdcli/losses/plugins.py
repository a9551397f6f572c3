"""A user's own logit loss, `--method py:FILE.py:NAME` (or py:package.module:NAME; kdcli.usercode).

NAME is a class with the interface of kdcli's logit losses: its parameters as constructor keywords
(a dataclass's fields), set with --method-arg KEY=VALUE, and instances called as
(student_logits (N, K), teacher_logits (N, K), labels (N,)) -> {"loss": scalar, other terms...}.
Subclassing kdcli.losses.registry.LogitLoss is optional. In training the loss runs inside
`PluginLoss`, which upcasts to float32 at least and detaches the teacher as every registered loss
does; `kdcli methods --check` runs kdcli.losses.checks on the class as written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kdcli import usercode
from kdcli.errors import UsageError
from kdcli.losses.registry import LogitLoss


def plugin_options(cls) -> dict:
    """A plugin class's parameters with their defaults (a dataclass's fields, else none known)."""
    if not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def plugin_class(ref: str, bundle: dict | None = None, where: str = ""):
    """The class `ref` names (from its stored `bundle` when given, trust-checked)."""
    cls = usercode.load(ref, bundle, where)
    if not isinstance(cls, type):
        raise UsageError(f"--method {ref}: {type(cls).__name__} is not a class (its parameters as fields, "
                         "called as (student_logits, teacher_logits, labels) -> terms)")
    return cls


def build_plugin(ref: str, args: dict):
    """An instance of the user's loss class with its --method-arg parameters."""
    cls = plugin_class(ref)
    try:
        loss = cls(**args)
    except TypeError as exc:
        raise UsageError(f"--method {ref}: bad --method-arg ({exc}); it takes {plugin_options(cls) or 'none known'}") from None
    if not callable(loss):
        raise UsageError(f"--method {ref}: its instances are not callable as (student_logits, teacher_logits, labels)")
    return loss


@dataclass
class PluginLoss(LogitLoss):
    """A user's loss object on upcast, teacher-detached logits (B, K) and labels (B,); its terms must
    hold "loss"."""

    plugin: object = field(default=None, metadata={"option": False})

    def terms(self, student_logits, teacher_logits, labels):
        terms = self.plugin(student_logits, teacher_logits, labels)
        if not isinstance(terms, dict) or "loss" not in terms:
            raise UsageError(f"loss {type(self.plugin).__name__} returned {type(terms).__name__}, not a dict of "
                             "terms with a 'loss' term")
        return terms
