"""generate: a language-model artifact continues a prompt, seeded, with its own tokenizer.

Sampling is the plain autoregressive loop over the model's last `context` tokens: softmax(z / T) at the
last position (top-k filtered when asked), one token drawn from a generator seeded by --seed, so the
same model, prompt and options always print the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdcli.errors import UsageError
from kdcli.stages.common import data_of, load_model
from kdcli.store import Store


@dataclass
class GenerateConfig:
    model: str
    prompt: str = ""
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int = 0  # 0 = the whole vocabulary
    seed: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0, got {self.top_k}")


def language_model(store: Store, ref: str, device: torch.device):
    """(model on `device`, its artifact, its text data set) of a language-model artifact; anything else
    is refused in one line."""
    artifact = store.get(ref, kind="model")
    if artifact.manifest.get("data", {}).get("task") != "lm":
        raise UsageError(f"{ref!r} ({artifact.manifest.get('model', {}).get('name')}) is not a language model; "
                         "train one on a text data set (--dataset python-docs or text:PATH)")
    model, artifact = load_model(store, ref)
    return model.to(device).eval(), artifact, data_of(artifact.manifest, store=store)


def prompt_ids(data, prompt: str) -> list[int]:
    """The prompt's token ids (a newline when it is empty: the model needs one token to start from)."""
    return data.text_tokenizer().backend_tokenizer.encode(prompt or "\n", add_special_tokens=False).ids


@torch.no_grad()
def generate(cfg: GenerateConfig, store: Store, device: torch.device = torch.device("cpu")) -> dict:
    """The prompt and its continuation: {"model", "prompt", "text", "ids", options...}."""
    cfg.validate()
    model, artifact, data = language_model(store, cfg.model, device)
    if cfg.top_k > data.num_outputs:
        raise UsageError(f"--top-k {cfg.top_k} exceeds the vocabulary of {data.num_outputs} tokens")
    ids = prompt_ids(data, cfg.prompt)
    start = len(ids)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    for _ in range(cfg.max_new_tokens):
        window = torch.tensor([ids[-data.context:]], device=device)
        logits = model(window)[0, -1].float() / cfg.temperature
        if cfg.top_k:
            kept = logits.topk(cfg.top_k)
            logits = torch.full_like(logits, -torch.inf).scatter_(0, kept.indices, kept.values)
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)))
    tokenizer = data.text_tokenizer()
    return {"model": artifact.id, "prompt": cfg.prompt, "continuation": tokenizer.decode(ids[start:]),
            "text": tokenizer.decode(ids), "ids": ids[start:], "seed": cfg.seed, "temperature": cfg.temperature,
            "top_k": cfg.top_k, "max_new_tokens": cfg.max_new_tokens}
