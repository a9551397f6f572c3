"""The teachers of a distill run: signals that give teacher logits (B, K) for a batch, and the
resolution of --logits / --teacher / --extra-teacher into parents, views and one signal.

`OnlineTeacher` runs the teacher on exactly the student's input; `CachedLogits` looks them up in a
logits table by pool index and view id, so a cached run and an online run on the same batches see
the same numbers; `EnsembleSignal` averages several.
"""

from __future__ import annotations

import torch
from torch import nn

from kdcli.augment import ViewSet, resolve_augment
from kdcli.engine import Batch, evaluate_test, prepare_model
from kdcli.errors import UsageError
from kdcli.stages.common import check_fits, check_logits_fit, check_same_text, load_model
from kdcli.stages.token_tables import TokenTable

MIXED_TABLE = ("mixup/cutmix make new images that a cached logits table has no logits for; "
               "give --teacher MODEL_REF to run the teacher online on the mixed batch")


class OnlineTeacher:
    """Teacher forward pass on exactly the student's (augmented, mixed, normalized) batch, in eval
    mode under inference mode; in the engine's autocast, so bf16/fp16 on a GPU when --precision says so."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)

    def __call__(self, batch: Batch) -> torch.Tensor:
        self.teacher.eval()
        with torch.inference_mode():
            logits = self.teacher(batch.x).float()
        return logits.clone()  # a normal tensor: an inference tensor cannot be saved for backward


class CachedLogits:
    """Lookup in a logits table (N_pool, V, K) (memory-mapped) by pool index and view id.

    A top-k table holds probabilities (N_pool, V, k) and class indices instead; the rest of the
    probability mass is spread evenly over the other classes (FKD, Shen & Xing 2022), and log
    probabilities stand in for logits (softmax(log p / T) is the tempered distribution).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], num_classes: int, identity_view: int,
                 device: torch.device):
        self.logits = tensors.get("logits")
        self.topk_probs = tensors.get("topk_probs")
        self.topk_index = tensors.get("topk_index")
        self.num_classes = num_classes
        self.identity_view = identity_view
        self.device = device
        self.views_in_table = (self.logits if self.logits is not None else self.topk_probs).shape[1]

    def lookup(self, idx: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """Pool indices (B,), view ids (B,) or None (clean) -> teacher logits (B, K) float32.

        A clean-image table (one view) answers every view with the clean logits, as seed 000 does.
        """
        # only the B rows asked for are read from the memory-mapped table (a CPU gather); the rest
        # of the work happens on the training device
        idx = idx.cpu()
        if views is None or self.views_in_table == 1:
            views = torch.full_like(idx, self.identity_view if self.views_in_table > 1 else 0)
        views = views.cpu()
        if self.logits is not None:
            return self.logits[idx, views].to(self.device, non_blocking=True).float()
        probs = self.topk_probs[idx, views].to(self.device, non_blocking=True).float()
        index = self.topk_index[idx, views].to(self.device, non_blocking=True).long()
        k = probs.shape[1]
        rest = (1.0 - probs.sum(1, keepdim=True)).clamp_min(0) / max(self.num_classes - k, 1)
        full = rest.expand(-1, self.num_classes).clone().scatter_(1, index, probs)
        return full.clamp_min(1e-8).log()

    def __call__(self, batch: Batch) -> torch.Tensor:
        if batch.mix is not None:
            raise UsageError(MIXED_TABLE)
        return self.lookup(batch.idx, batch.views)


class EnsembleSignal:
    """The mean of several teachers' logits (B, K): online teachers and cached tables alike."""

    def __init__(self, signals):
        self.signals = list(signals)

    def __call__(self, batch: Batch) -> torch.Tensor:
        return torch.stack([signal(batch) for signal in self.signals]).mean(0)


def teacher_sources(cfg, ctx, data):
    """The teachers of a run: --logits or else --teacher, then every --extra-teacher (a model or a
    logits artifact). -> (parents {role: artifact id}, views, make_signal(device), test logits (N_test, K))."""
    refs = [(cfg.logits, "logits")] if cfg.logits else [(cfg.teacher, "model")] if cfg.teacher else []
    refs += [(ref, None) for ref in cfg.extra_teachers]
    requested = resolve_augment(cfg.augment, data.default_augment, data.is_image)
    parents, makers, tests, table_views = {}, [], [], None
    for number, (ref, kind) in enumerate(refs, 1):
        artifact = ctx.store.get(ref, kind=kind)
        role = artifact.manifest.get("kind", "")
        suffix = "" if number == 1 else f"_{number}"
        if role == "logits":
            if requested.mixing:
                raise UsageError(MIXED_TABLE)
            check_logits_fit(artifact, data)
            if data.task == "lm":
                if len(refs) > 1:
                    raise UsageError("--extra-teacher averages image teachers; a language model distills from one")
                tensors = {name: artifact.tensor(name) for name in artifact.tensor_names() if name != "test_top1"}
                makers.append(lambda device, t=tensors: TokenTable(t, data.num_outputs, device))
                tests.append(artifact.tensor("test_top1").long())
                parents["logits"] = artifact.id
                continue
            own = ViewSet.parse(artifact.manifest["views"])
            if own.count > 1:
                if table_views is not None and table_views.spec() != own.spec():
                    raise UsageError(f"logits tables with different views ({table_views.spec()} and {own.spec()}) "
                                     "cannot be averaged; cache them with the same --views")
                table_views = own
            tensors = {name: artifact.tensor(name) for name in artifact.tensor_names() if name != "test"}
            makers.append(lambda device, t=tensors, v=own: CachedLogits(t, data.num_outputs, v.identity, device))
            tests.append(artifact.tensor("test").float())
            parents[f"logits{suffix}"] = artifact.id
        elif role == "model":
            teacher, _ = load_model(ctx.store, ref)
            check_fits(artifact, data, "teacher")
            check_same_text(artifact, data, "teacher")
            teacher = prepare_model(teacher, ctx.device, False)
            makers.append(lambda device, t=teacher: OnlineTeacher(t))
            tests.append(evaluate_test(teacher, data, cfg.eval_batch_size, ctx.device, cfg.precision)[1])
            parents[f"teacher{suffix}"] = artifact.id
        else:
            raise UsageError(f"teacher {ref!r} is a {role or 'unknown'} artifact; give a model or a logits table")
    if table_views is not None:
        views = table_views
        ctx.reporter.info(f"student views follow the logits table: {views.spec()} ({views.count} views)")
    else:
        views = requested

    def make_signal(device):
        signals = [make(device) for make in makers]
        return signals[0] if len(signals) == 1 else EnsembleSignal(signals)

    return parents, views, make_signal, tests[0] if len(tests) == 1 else torch.stack(tests).mean(0)
