"""The one table of distillation methods and their weights: what `kdcli methods` prints and what
`distill` resolves a method's options from.

Each method reads some of the distill stage's weight options, with its published defaults:
kd / kd-ls: --alpha (the CE weight; the KD weight is 1 - alpha) and --temperature; dkd / dkd-ls:
--ce-weight, --dkd-alpha, --dkd-beta, --temperature, --dkd-warmup; deit: --alpha; the feature
methods: --ce-weight and --feature-weight (crd also --crd-dim, --crd-negatives); regression data:
--w-hard, --w-hp, --w-feat, --w-gr. A weight the chosen method does not read is refused. A user's
loss, py:FILE.py:NAME (kdcli.losses.plugins), reads none of them: its parameters are --method-arg.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from kdcli import usercode
from kdcli.errors import UsageError
from kdcli.losses.feature_methods import FEATURE_METHODS
from kdcli.losses.plugins import plugin_class
from kdcli.losses.registry import LOSSES
from kdcli.losses.regression import REGRESSION_OPTIONS, REGRESSION_SUMMARY

REGRESSION = "regression"


@dataclass(frozen=True)
class Method:
    """One row of the table: the --method name, what it needs, its options with defaults, a summary."""

    name: str
    kind: str  # "logit", "feature" or "regression"
    needs: str
    options: dict
    summary: str


def method_table() -> list[Method]:
    """Every method `distill --method` accepts, logit methods first."""
    rows = [Method(name, "logit", "teacher logits (--logits or --teacher)", LOSSES.get(name).options(),
                   LOSSES.get(name).summary())
            for name in LOSSES.names() if LOSSES.get(name).needs_teacher]
    rows += [Method(name, "feature", "teacher features (--teacher, --feature-pair)",
                    dict(FEATURE_METHODS.get(name).options), FEATURE_METHODS.get(name).summary)
             for name in FEATURE_METHODS.names()]
    rows.append(Method(REGRESSION, "regression", "regression data, --teacher", dict(REGRESSION_OPTIONS),
                       REGRESSION_SUMMARY))
    return rows


def get_method(name: str) -> Method:
    """The table's row for `name`, or a user's py: loss (its weights come from --method-arg); an unknown
    name lists every method."""
    if usercode.is_code_ref(name):
        cls = plugin_class(name)
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        return Method(name, "logit", "teacher logits (--logits or --teacher)", {}, summary)
    for method in method_table():
        if method.name == name:
            return method
    names = [m.name for m in method_table()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(f"unknown method {name!r}; {hint}methods: {', '.join(names)} (see 'kdcli methods')")


def all_options() -> list[str]:
    """Every weight option some method reads, in table order."""
    return list(dict.fromkeys(option for method in method_table() for option in method.options))
