"""The one runner: the cached run of any stage (a kdcli.stages.stage.Stage), and the training of any plan.

A training stage (train-teacher, baseline, every distill variant) is a planner that returns a
`Plan`; `train(stage, cfg, ctx, data, plan)` seeds, builds the student, fits it with early stopping,
evaluates it on the test set and stores the model artifact, through `run_cached`.

`run_cached` runs a stage's `produce` unless the same (stage, config, inputs, code) already ran.
"code" is the stage's code fingerprint: a hash of the source files that decide its numbers
(`Stage.numerics`), so a run made by other code is not reused (it trains again and says which run
it replaces). Under torchrun every rank trains together and rank 0 alone stores (kdcli.distributed).

Fairness: a student's initial weights, batch order and augmentation draws depend on --seed alone,
so a baseline and a distilled student with the same seed start from bit-identical weights (the
manifest records the hash of the initial weights) and see the same batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from kdcli import distributed
from kdcli.augment import ViewSet
from kdcli.config import key_dict, to_dict
from kdcli.data import DataSet
from kdcli.engine import Checkpoint, DeviceData, Objective, agreement, evaluate_test, fit, prepare_model
from kdcli.models import parameter_count, state_hash
from kdcli.models.registry import model_factory
from kdcli.reporting import Reporter
from kdcli.stages.common import (
    Produce,
    RunContext,
    StageResult,
    build_from_config,
    code_bundles,
    code_hashes,
    seed_everything,
    weights_input,
)
from kdcli.stages.stage import Stage
from kdcli.store import CorruptArtifact, Store


class CacheProbe(Exception):  # noqa: N818 (a signal, not an error): carries the key out of a probing run
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def probe_cache_key(stage: Stage, cfg, store: Store) -> str:
    """The key `cfg`'s run of `stage` has in `store` (Stage.cache_key): the stage runs in probe mode and
    stops where run_cached has its key."""
    try:
        stage(cfg, RunContext(store=store, reporter=Reporter(quiet=True), probe=True))
    except CacheProbe as probe:
        return probe.key
    raise RuntimeError(f"stage {stage.name} returned without looking up its cache key")


def cache_key(stage: Stage, config, inputs: dict) -> tuple[str, str]:
    """(the key of this run, the key of the same run under any code: its manifest's config_key). The
    code is kdcli's (the stage's fingerprint) and the user's py: code the config names (its sha256)."""
    code = stage.code_fingerprint() + "".join(f" {name}:{sha}" for name, sha in code_hashes(config).items())
    config = key_dict(config)
    return Store.cache_key(stage.name, config, inputs, code=code), Store.cache_key(stage.name, config, inputs)


def run_cached(ctx: RunContext, stage: Stage, config, inputs: dict[str, str], produce: Produce,
               seed: int | None = None) -> StageResult:
    """Run `produce(cache_key)` unless the same (stage, config, inputs, code) already ran.

    One process at a time runs a given key (a file lock); the others wait and then reuse its result.
    Under torchrun (kdcli.distributed) rank 0 looks the run up and tells the others whether to train;
    all ranks train together; rank 0 alone writes the artifact and the others load it by id.
    """
    if distributed.active():
        return _run_cached_ranked(ctx, stage, config, inputs, produce, seed)
    return _run_cached(ctx, stage, config, inputs, produce, seed)


def _run_cached(ctx: RunContext, stage: Stage, config, inputs: dict, produce: Produce, seed) -> StageResult:
    store = ctx.store
    key, any_code_key = cache_key(stage, config, inputs)
    if ctx.probe:
        raise CacheProbe(key)
    # a lease on the inputs and the checkpoint: `artifacts gc` removes neither while this run lives
    parents = [value for value in inputs.values() if isinstance(value, str)]
    with store.lease(ids=parents, checkpoints=[key]), store.lock(
            f"stage-{key}", on_wait=lambda holder: ctx.reporter.info(
                f"waiting for a running identical stage ({holder.describe()})")):
        entry = None if ctx.force else store.lookup_run(key)
        if entry is not None:
            try:
                artifact = store.get(entry["artifact"])
                ctx.reporter.info(
                    f"skipped {stage.name}: same config and inputs as {artifact.id[:12]} ({entry['created']}, "
                    f"key {key[:12]}); --force reruns")
                return _finish(ctx, StageResult(artifact, skipped=True))
            except CorruptArtifact as exc:
                ctx.reporter.warn(f"{exc}; rerunning {stage.name}")
        if ctx.force and store.lookup_run(key) is not None:
            ctx.reporter.info(f"running {stage.name} again (--force)")
        elif (earlier := _same_run_other_code(store, stage, any_code_key)) is not None:
            ctx.reporter.info(f"running {stage.name} again: code changed since run {earlier['artifact'][:12]} "
                              f"({earlier['created']})")
        kind, tensors, manifest = produce(key)
        manifest = {"stage": stage.name, "config": to_dict(config), "parents": inputs, "cache_key": key,
                    "config_key": any_code_key, "code_fingerprint": stage.code_fingerprint(), "seed": seed,
                    **manifest}
        artifact = store.put(kind, tensors, manifest)
        store.record_run(key, stage.name, artifact.id)
        with contextlib.suppress(FileNotFoundError):  # only now is the resumable state no longer needed
            store.checkpoint_path(key).unlink()
    return _finish(ctx, StageResult(artifact, skipped=False))


def rank_context(ctx: RunContext) -> RunContext:
    """The run context of this rank: under torchrun the ranks other than 0 print, name and tag nothing."""
    if distributed.world_size() <= 1 or distributed.is_main():
        return ctx
    return dataclasses.replace(ctx, reporter=Reporter(quiet=True), name=None, tags=[])


def _same_run_other_code(store: Store, stage: Stage, any_code_key: str) -> dict | None:
    """The latest recorded run of this stage with the same config and inputs made by other code (its
    manifest's config_key matches), or None. Read only on a cache miss, which trains anyway."""
    matches = []
    for entry in store.runs():
        if entry.get("stage") != stage.name:
            continue
        if store.read_manifest(entry["artifact"]).get("config_key") == any_code_key:  # {} if unreadable
            matches.append(entry)
    return max(matches, key=lambda e: e.get("created", ""), default=None)


def _run_cached_ranked(ctx: RunContext, stage: Stage, config, inputs: dict, produce: Produce, seed) -> StageResult:
    inputs = {**inputs, "world_size": str(distributed.world_size())}
    if not distributed.is_main():
        ctx = rank_context(ctx)
        message = distributed.broadcast_object(None)
        if message[0] == "run":
            produce(message[1])
        return StageResult(ctx.store.get(distributed.broadcast_object(None)), skipped=message[0] == "hit")
    ran = []

    def produce_main(key):
        distributed.broadcast_object(("run", key))
        ran.append(key)
        kind, tensors, manifest = produce(key)
        return kind, tensors, {**manifest, "world_size": distributed.world_size()}

    result = _run_cached(ctx, stage, config, inputs, produce_main, seed)
    if not ran:
        distributed.broadcast_object(("hit", None))
    distributed.broadcast_object(result.id)
    return result


def _finish(ctx: RunContext, result: StageResult) -> StageResult:
    if ctx.name:
        ctx.store.set_ref(ctx.name, result.id)
    for tag in ctx.tags:
        ctx.store.add_tag(tag, result.id)
    return result


# ---- training a plan --------------------------------------------------------------------------------

# validation figures of the kept epoch that go into the metrics (a sweep selects on some of them)
KEPT_VALIDATION = ("val_loss", "val_acc", "val_nll", "val_mse", "val_bpb", "val_ece")

# builds the objective once the student exists and the data sits on the device
ObjectiveFactory = Callable[[nn.Module, DeviceData], Objective]


@dataclass
class Plan:
    """What a training run trains on: its parent artifacts {role: id}, the student's views, the
    objective factory, the teacher's test outputs for the agreement metric (logits (N_test, K), or a
    language model's top-1 ids (N_test, L): kdcli.engine.evaluate_test), and manifest
    entries of its own. `config` is the run's resolved config (weights filled in per method), which
    the cache key and the manifest record."""

    config: object
    parents: dict[str, str]
    views: ViewSet
    make_objective: ObjectiveFactory
    teacher_test_logits: torch.Tensor | None = None
    extra_manifest: dict = field(default_factory=dict)


def train(stage: Stage, ctx: RunContext, data: DataSet, plan: Plan) -> StageResult:
    """Seed, build, fit with early stopping, evaluate on the test set, store the model artifact."""
    cfg = plan.config
    ctx = rank_context(ctx)

    def produce(key: str):
        seed_everything(cfg.seed)
        student, spec = build_from_config(cfg, data)
        initial_hash = state_hash(student)
        device_data = DeviceData(data, ctx.device)
        model = prepare_model(distributed.sync_batchnorm(student, ctx.device), ctx.device, cfg.compile)
        objective = plan.make_objective(model, device_data)
        checkpoint = Checkpoint(ctx.store.checkpoint_path(key))
        ctx.reporter.info(f"{stage.name}: {cfg.model} ({parameter_count(student):,} params) on {data.name} "
                          f"[{len(data.train_idx)} train / {len(data.val_idx)} val], {ctx.device}")
        result = fit(model, device_data, objective, cfg, plan.views, ctx.reporter, checkpoint)
        metrics, outputs = evaluate_test(model, data, cfg.eval_batch_size, ctx.device, cfg.precision)
        state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
        metrics.update({
            "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            **{k: v for k, v in result.kept().items() if k in KEPT_VALIDATION}, "params": parameter_count(student),
            "size_bytes": sum(t.numel() * t.element_size() for t in state.values()),
        })
        if plan.teacher_test_logits is not None and data.task != "regression":
            metrics["teacher_agreement"] = agreement(data, outputs, plan.teacher_test_logits)
        manifest = {"model": spec, "metrics": metrics, "history": result.history,
                    "initial_weights_sha256": initial_hash, "data_fingerprint": data.fingerprint,
                    "data": data.describe(), "device": str(ctx.device), "augment": plan.views.spec(),
                    # on a CPU the thread count moves the last bits of the weights (not part of the key)
                    "cpu_threads": torch.get_num_threads() if ctx.device.type == "cpu" else None,
                    **{f"{name}_code": bundle for name, bundle in code_bundles(cfg).items() if name != "model"},
                    **plan.extra_manifest}
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("test_"))
        ctx.reporter.info(f"{stage.name}: best epoch {result.best_epoch}; {summary}")
        return "model", state, manifest

    model_factory(cfg.model)  # an unknown --model fails here, before run_cached touches the store
    inputs = {"data": data.fingerprint, **data.parents, **plan.parents, **weights_input(cfg)}
    return run_cached(ctx, stage, cfg, inputs, produce, seed=cfg.seed)
