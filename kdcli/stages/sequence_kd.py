"""sequence-kd: sequence-level knowledge distillation (Kim & Rush 2016, "Sequence-Level Knowledge
Distillation"): the student trains on the teacher's own sequences instead of matching its per-token
distribution.

Every training window whose first --prompt-tokens inputs are text gives one sample: those tokens, then
--length tokens drawn one at a time from softmax(z / T) of the teacher (on its last `context` tokens).
A sample is a document cut into windows as any other (kdcli.data.text.windows). The data artifact holds
them as the pool's training windows, and the corpus's validation windows and test split unchanged;
`--dataset seqkd:REF` trains any stage on it (baseline: plain CE; cache-logits, then distill).
Draws are seeded by --seed and the first window of each generation batch, so a rerun is identical.
"""

from __future__ import annotations

import numpy as np
import torch

from kdcli.data.text import IGNORE, windows
from kdcli.errors import UsageError
from kdcli.stages.common import RunContext, StageResult, check_fits, check_text_run, load_data, load_model
from kdcli.stages.configs import SequenceKDConfig
from kdcli.stages.registry import SEQUENCE_KD
from kdcli.stages.runner import run_cached

GENERATION_BATCH = 256  # samples drawn side by side (fixed: the draws must not depend on it)


@torch.no_grad()
def sample_continuations(lm, prompts: torch.Tensor, length: int, temperature: float, seed: int,
                         device: torch.device, advance) -> torch.Tensor:
    """Prompts (N, P) int64 -> (N, P + length) int64: each continued by `length` draws from the
    transformers causal LM `lm`, one token per step on its key-value cache."""
    out = []
    for start in range(0, len(prompts), GENERATION_BATCH):
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
        ids = prompts[start:start + GENERATION_BATCH].to(device)
        step, past = ids, {}
        for _ in range(length):
            result = lm(input_ids=step, use_cache=True, **past)
            # transformers 5 names the key-value cache `cache`, earlier versions `past_key_values`
            past = {"cache": result.cache} if "cache" in result else {"past_key_values": result.past_key_values}
            logits = result.logits[:, -1].float() / temperature
            step = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            ids = torch.cat([ids, step], 1)
        out.append(ids.cpu())
        advance(len(ids))
    return torch.cat(out)


def sample_windows(samples: torch.Tensor, context: int, token_bytes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sampled sequences (N, S) -> their windows x, y (W, context) and the predicted tokens' bytes and count."""
    parts = [windows(row, context) for row in samples.numpy()]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    predicted = y[y != IGNORE]
    return x, y, int(token_bytes[predicted].sum()), len(predicted)


def sequence_kd(cfg: SequenceKDConfig, ctx: RunContext) -> StageResult:
    artifact = ctx.store.get(cfg.teacher, kind="model")
    if artifact.manifest.get("data", {}).get("task") != "lm":
        raise UsageError(f"sequence-kd samples a language model; {cfg.teacher!r} "
                         f"({artifact.manifest.get('model', {}).get('name')}) is not one (train it on a text corpus)")
    check_text_run(cfg, ctx.store, [cfg.teacher])
    data = load_data(cfg, ctx)
    teacher, artifact = load_model(ctx.store, cfg.teacher)
    check_fits(artifact, data, "teacher")
    length = cfg.length or data.context + 1 - cfg.prompt_tokens
    if cfg.prompt_tokens >= data.context:
        raise UsageError(f"--prompt-tokens {cfg.prompt_tokens} must be below the context {data.context}")
    positions = teacher.max_positions or 0
    if cfg.prompt_tokens + length > positions:
        raise UsageError(f"--prompt-tokens {cfg.prompt_tokens} + --length {length} exceeds the teacher's "
                         f"{positions} positions")

    def produce(key: str):
        lm = teacher.lm.to(ctx.device).eval()
        train = data.train_idx[(data.y_pool[data.train_idx] != IGNORE).sum(1) >= cfg.prompt_tokens]
        prompts = data.x_pool[train, :cfg.prompt_tokens].long()
        ctx.reporter.info(f"sequence-kd: {len(prompts)} samples of {cfg.prompt_tokens} + {length} tokens at T "
                          f"{cfg.temperature:g} from teacher {artifact.id[:12]} on {ctx.device}")
        with ctx.reporter.progress("teacher samples", total=len(prompts)) as advance:
            samples = sample_continuations(lm, prompts, length, cfg.temperature, cfg.seed, ctx.device, advance)
        x, y, n_bytes, n_tokens = sample_windows(samples, data.context, data.token_bytes)
        val = data.val_idx
        tensors = {"x_pool": torch.cat([x, data.x_pool[val].long()]), "y_pool": torch.cat([y, data.y_pool[val]]),
                   "x_test": data.x_test.long().clone(), "y_test": data.y_test.clone(),
                   "train_idx": torch.arange(len(x)), "val_idx": torch.arange(len(x), len(x) + len(val))}
        source = {"dataset": cfg.dataset, "tokenizer": data.tokenizer["spec"], "context": data.context}
        manifest = {"name": f"sequence-kd of {artifact.id[:12]}", "tokenizer": data.tokenizer, "context": data.context,
                    "source_data": source, "data_fingerprint": data.fingerprint, "samples": len(prompts),
                    "split_bytes": {**data.split_bytes, "train": n_bytes},
                    "split_tokens": {**data.split_tokens, "train": n_tokens},
                    "teacher_model": artifact.manifest["model"]}
        ctx.reporter.info(f"sequence-kd: {len(x)} training windows, {n_tokens} predicted tokens, "
                          f"{n_bytes} bytes of teacher text")
        return "data", tensors, manifest

    return run_cached(ctx, SEQUENCE_KD, cfg, {"data": data.fingerprint, "teacher": artifact.id}, produce,
                      seed=cfg.seed)
