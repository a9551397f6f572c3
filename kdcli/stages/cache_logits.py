"""cache-logits: the teacher's logits for every pool image (and every discrete view) as a table.

Tensors of the logits artifact:
    logits      (N_pool, V, K) float16/float32, V = number of views (1 = clean images, seed 000), or
    topk_probs  (N_pool, V, k) + topk_index (N_pool, V, k) with --topk k (FKD-style compression)
    test        (N_test, K) float32 clean test-set logits, for reporting teacher agreement only
The manifest records the data fingerprint; distill refuses a table from other data.
"""

from __future__ import annotations

import torch

from kdcli.augment import ViewSet
from kdcli.engine import autocast, predict, prepare_model, test_metrics
from kdcli.errors import UsageError
from kdcli.stages.common import RunContext, StageResult, check_fits, load_data, load_model, run_cached
from kdcli.stages.configs import CacheLogitsConfig


@torch.no_grad()
def view_logits(teacher, data, views: ViewSet, batch_size: int, device, precision: str, advance) -> torch.Tensor:
    """Teacher logits for every pool image under every view: (N_pool, V, K) float32 on the CPU."""
    n = len(data.x_pool)
    table = None
    for start in range(0, n, batch_size):
        x = data.x_pool[start:start + batch_size].to(device)
        for view in range(views.count):
            ids = torch.full((len(x),), view, dtype=torch.long)
            with autocast(device, precision):
                out = teacher(data.prepare(views.apply(x, ids))).float().cpu()
            if table is None:
                table = torch.empty(n, views.count, out.shape[1])
            table[start:start + len(x), view] = out
        advance(len(x))
    return table


def compress_topk(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """(N, V, K) logits -> top-k softmax probabilities (N, V, k) float16 and their class indices."""
    probs, index = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return {"topk_probs": probs.half(), "topk_index": index.to(torch.int16 if logits.shape[-1] < 32768 else torch.int32)}


def cache_logits(cfg: CacheLogitsConfig, ctx: RunContext) -> StageResult:
    data = load_data(cfg)
    if data.task != "classification":
        raise UsageError("cache-logits is for classification; regression teachers run online")
    teacher, artifact = load_model(ctx.store, cfg.teacher)
    check_fits(artifact, data, "teacher")
    views = ViewSet.parse(cfg.views)
    if views.count > 1 and not data.is_image:
        raise UsageError("--views needs image data")
    if cfg.topk >= data.num_outputs:
        raise UsageError(f"--topk must be below the class count {data.num_outputs}, got {cfg.topk}")

    def produce(key: str):
        model = prepare_model(teacher, ctx.device, False)
        ctx.reporter.info(f"cache-logits: {len(data.x_pool)} images x {views.count} views with teacher "
                          f"{artifact.id[:12]} on {ctx.device}")
        with ctx.reporter.progress("teacher logits", total=len(data.x_pool)) as advance:
            table = view_logits(model, data, views, cfg.eval_batch_size, ctx.device, cfg.precision, advance)
        test = predict(model, data, data.x_test, cfg.eval_batch_size, ctx.device, cfg.precision)
        if cfg.topk:
            tensors = compress_topk(table, cfg.topk)
        else:
            tensors = {"logits": table.to(torch.float16 if cfg.dtype == "float16" else torch.float32)}
        table_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        tensors["test"] = test
        teacher_metrics = {f"teacher_{k}": v for k, v in test_metrics(data.task, test, data.y_test).items()}
        manifest = {"data_fingerprint": data.fingerprint, "data": data.describe(), "views": views.spec(),
                    "view_count": views.count, "topk": cfg.topk, "dtype": cfg.dtype,
                    "table_bytes": table_bytes, "metrics": teacher_metrics,
                    "teacher_model": artifact.manifest["model"]}
        ctx.reporter.info(f"cache-logits: table {tuple(table.shape)}, {table_bytes / 2**20:.1f} MiB; "
                          f"teacher test acc {teacher_metrics['teacher_test_acc']:.2f}%")
        return "logits", tensors, manifest

    return run_cached(ctx, "cache-logits", cfg, {"data": data.fingerprint, "teacher": artifact.id}, produce)
