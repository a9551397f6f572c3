"""cache-logits: the teacher's logits for every pool image (and every discrete view) as a table.

Tensors of the logits artifact:
    logits      (N_pool, V, K) float16/float32, V = number of views (1 = clean images, seed 000), or
    topk_probs  (N_pool, V, k) + topk_index (N_pool, V, k) with --topk k (FKD-style compression)
    test        (N_test, K) float32 clean test-set logits, for reporting teacher agreement only
The manifest records the data fingerprint; distill refuses a table from other data. A language-model
teacher's table is described in kdcli.stages.token_tables (test_top1 (N_test, L) instead of test).
"""

from __future__ import annotations

import dataclasses

import torch

from kdcli.augment import ViewSet
from kdcli.engine import Prepare, autocast, eval_batch, evaluate_test, predict, prepare_model, test_metrics
from kdcli.errors import KdcliError, UsageError
from kdcli.stages.common import RunContext, StageResult, check_fits, check_text_run, load_data, load_model
from kdcli.stages.configs import CacheLogitsConfig
from kdcli.stages.registry import CACHE_LOGITS
from kdcli.stages.runner import run_cached
from kdcli.stages.token_tables import TableSpec, gib, id_dtype, table_summary


@torch.no_grad()
def view_logits(teacher, data, views: ViewSet, batch_size: int, device, precision: str, advance,
                dtype: torch.dtype = torch.float32, topk: int = 0) -> dict[str, torch.Tensor]:
    """Teacher logits for every pool image under every view, as the table's tensors on the CPU:
    {"logits": (N_pool, V, K) `dtype`}, or with `topk` the `compress_topk` pair.

    Views are applied to the batch on the device (kdcli.augment); each batch is stored in its final
    format as soon as it is computed, so memory holds the table once, in its stored dtype.
    """
    n = len(data.x_pool)
    prepare = Prepare(data, device)
    tensors: dict[str, torch.Tensor] = {}
    for start in range(0, n, batch_size):
        x = data.x_pool[start:start + batch_size].to(device)
        outputs = []
        for view in range(views.count):
            ids = torch.full((len(x),), view, dtype=torch.long, device=device)
            with autocast(device, precision):
                outputs.append(teacher(prepare(views.apply(x, ids))).float())
        chunk = torch.stack(outputs, 1).cpu()  # (B, V, K) float32
        part = compress_topk(chunk, topk) if topk else {"logits": chunk.to(dtype)}
        for name, value in part.items():  # float16 ends at 65504: a larger logit would be inf, then NaN in KD
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                where = "the teacher's outputs" if not bool(torch.isfinite(chunk).all()) else f"{name} in {value.dtype}"
                raise KdcliError(f"non-finite teacher logits for pool images {start}..{start + len(x) - 1} ({where}; "
                                 f"largest |logit| {chunk.abs().nan_to_num(posinf=float('inf')).max():.4g}); "
                                 "use --dtype float32 or a teacher with finite outputs")
        for name, value in part.items():
            if name not in tensors:
                tensors[name] = torch.empty((n, *value.shape[1:]), dtype=value.dtype)
            tensors[name][start:start + len(x)] = value
        advance(len(x))
    return tensors


def compress_topk(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """(N, V, K) logits -> top-k softmax probabilities (N, V, k) float16 and their class indices."""
    probs, index = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return {"topk_probs": probs.half(), "topk_index": index.to(torch.int16 if logits.shape[-1] < 32768 else torch.int32)}


@torch.no_grad()
def window_table(teacher, data, spec: TableSpec, batch_size: int, device, precision: str,
                 advance) -> dict[str, torch.Tensor]:
    """A language-model teacher's table over every pool window (kdcli.stages.token_tables), each
    batch stored in its final format as soon as it is computed."""
    n = len(data.x_pool)
    prepare = Prepare(data, device)
    tensors: dict[str, torch.Tensor] = {}
    batch_size = eval_batch(data, batch_size)
    for start in range(0, n, batch_size):
        x = prepare(data.x_pool[start:start + batch_size].to(device))
        with autocast(device, precision):
            part = spec.encode(teacher(x), start)
        for name, value in part.items():
            if name not in tensors:
                tensors[name] = torch.empty((n, *value.shape[1:]), dtype=value.dtype)
            tensors[name][start:start + len(x)] = value.cpu()
        advance(len(x))
    return tensors


def cache_text_table(cfg: CacheLogitsConfig, ctx: RunContext, data, teacher, artifact) -> StageResult:
    """cache-logits on a language-model teacher: its --table over the pool windows, the test top-1 ids."""
    spec = TableSpec.parse(cfg.table, data.num_outputs)
    positions = len(data.x_pool) * data.context
    spec.check_size(positions, data.num_outputs)

    def produce(key: str):
        model = prepare_model(teacher, ctx.device, False)
        ctx.reporter.info(f"cache-logits: {spec.spec()} table over {len(data.x_pool)} windows x {data.context} "
                          f"tokens with teacher {artifact.id[:12]} on {ctx.device}")
        with ctx.reporter.progress("teacher table", total=len(data.x_pool)) as advance:
            tensors = window_table(model, data, spec, cfg.eval_batch_size, ctx.device, cfg.precision, advance)
        table_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        metrics, top1 = evaluate_test(model, data, cfg.eval_batch_size, ctx.device, cfg.precision)
        tensors["test_top1"] = top1.to(id_dtype(data.num_outputs))
        summary = table_summary(spec, positions, data.num_outputs, table_bytes)
        manifest = {"data_fingerprint": data.fingerprint, "data": data.describe(), "views": "none", "view_count": 1,
                    "table_bytes": table_bytes, **summary,
                    "metrics": {f"teacher_{k}": v for k, v in metrics.items()},
                    "teacher_model": artifact.manifest["model"]}
        ctx.reporter.info(f"cache-logits: {spec.spec()} table {gib(table_bytes)}, "
                          f"{summary['bytes_per_token']:.1f} bytes per token ({100 * summary['full_share']:.2f}% of "
                          f"the full table's {gib(summary['full_table_bytes'])}); teacher test bits per byte "
                          f"{metrics['test_bpb']:.4f}")
        return "logits", tensors, manifest

    config = dataclasses.replace(cfg, table=spec.spec())
    return run_cached(ctx, CACHE_LOGITS, config, {"data": data.fingerprint, "teacher": artifact.id}, produce)


def cache_logits(cfg: CacheLogitsConfig, ctx: RunContext) -> StageResult:
    if cfg.is_text:  # before any data loads: the teacher's tokenizer and context, K against its vocabulary
        check_text_run(cfg, ctx.store, [cfg.teacher])
        TableSpec.parse(cfg.table, ctx.store.get(cfg.teacher, kind="model").manifest["model"]["num_outputs"])
    data = load_data(cfg, ctx)
    if data.task == "regression":
        raise UsageError("cache-logits is for classification; regression teachers run online")
    teacher, artifact = load_model(ctx.store, cfg.teacher)
    check_fits(artifact, data, "teacher")
    if data.task == "lm":
        return cache_text_table(cfg, ctx, data, teacher, artifact)
    views = ViewSet.parse(cfg.views)
    if views.mixing:
        raise UsageError(f"--views {cfg.views}: mixup/cutmix make new images per batch, which a table cannot "
                         "hold; distill with --teacher MODEL_REF --augment ...,mixup:A instead")
    if views.count > 1 and not data.is_image:
        raise UsageError("--views needs image data")
    if cfg.topk >= data.num_outputs:
        raise UsageError(f"--topk must be below the class count {data.num_outputs}, got {cfg.topk}")

    def produce(key: str):
        model = prepare_model(teacher, ctx.device, False)
        ctx.reporter.info(f"cache-logits: {len(data.x_pool)} images x {views.count} views with teacher "
                          f"{artifact.id[:12]} on {ctx.device}")
        with ctx.reporter.progress("teacher logits", total=len(data.x_pool)) as advance:
            tensors = view_logits(model, data, views, cfg.eval_batch_size, ctx.device, cfg.precision, advance,
                                  dtype=torch.float16 if cfg.dtype == "float16" else torch.float32, topk=cfg.topk)
        test = predict(model, data, data.x_test, cfg.eval_batch_size, ctx.device, cfg.precision)
        shape = tuple(next(iter(tensors.values())).shape)
        table_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        tensors["test"] = test
        teacher_metrics = {f"teacher_{k}": v for k, v in test_metrics(data.task, test, data.y_test).items()}
        manifest = {"data_fingerprint": data.fingerprint, "data": data.describe(), "views": views.spec(),
                    "view_count": views.count, "topk": cfg.topk, "dtype": cfg.dtype,
                    "table_bytes": table_bytes, "metrics": teacher_metrics,
                    "teacher_model": artifact.manifest["model"]}
        ctx.reporter.info(f"cache-logits: table {shape}, {table_bytes / 2**20:.1f} MiB; "
                          f"teacher test acc {teacher_metrics['teacher_test_acc']:.2f}%")
        return "logits", tensors, manifest

    return run_cached(ctx, CACHE_LOGITS, cfg, {"data": data.fingerprint, **data.parents, "teacher": artifact.id},
                      produce)

