"""Hugging Face causal language models as kdcli models: `--model hf-causal:TYPE` (TYPE a transformers
model type with a causal-LM head: gpt2, llama, ...) built from a config with random weights.

The data set gives the sizes that are not the user's to choose: the vocabulary (num_outputs, from the
tokenizer) and the context (input_shape (L,)); `--model-arg n_layer=4 n_embd=256 ...` sets the rest.
`CausalLM` wraps the library's model so that the engine sees (B, L) token ids -> (B, L, V) logits like
any other kdcli model. A pretrained model comes from a local directory (`load_pretrained_causal`,
offline); its stored spec is the full config, so it rebuilds offline from the artifact.
transformers is imported lazily.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import nn

from kdcli.errors import UsageError
from kdcli.models.external import first_line, import_transformers
from kdcli.models.registry import FAMILIES, register_preset

# config keys that describe a saved file, not the architecture: left out of a stored spec
_VOLATILE_CONFIG_KEYS = ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
                         "_attn_implementation_autoset", "vocab_size", "model_type")


class CausalLM(nn.Module):
    """(B, L) int64 token ids -> next-token logits (B, L, V) float of a transformers causal LM `lm`.

    No attention mask: kdcli's windows are padded at their tail only, and a causal model's earlier
    positions never see those pads (their targets are masked)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits

    @property
    def max_positions(self) -> int | None:
        return getattr(self.lm.config, "max_position_embeddings", None)


def causal_config(model_type: str, vocab_size: int, context: int, **args):
    """The transformers config of a `model_type` causal LM for `vocab_size` tokens; a context longer
    than the model's positions is refused (UsageError) before anything is built."""
    transformers = import_transformers()
    try:
        config = transformers.AutoConfig.for_model(model_type, **args)
    except ValueError as exc:
        raise UsageError(f"hf-causal:{model_type}: {first_line(exc)}") from None
    config.vocab_size = int(vocab_size)
    for special in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the library's defaults name GPT-2's ids
        value = getattr(config, special, None)
        if isinstance(value, int) and value >= vocab_size:
            setattr(config, special, None)
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and context > positions:
        raise UsageError(f"--context {context} is longer than hf-causal:{model_type}'s {positions} positions; "
                         f"give a shorter --context or a larger --model-arg for its positions")
    return config


def _text_shape(model_type: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 1:
        raise UsageError(f"hf-causal:{model_type} is a language model; the data set has inputs of shape "
                         f"{tuple(input_shape)} (give a text data set: --dataset text:PATH or python-docs)")
    return int(input_shape[0])


@FAMILIES.register("hf-causal")
def hf_causal(model_type: str, input_shape, num_outputs: int, **args) -> nn.Module:
    """a transformers causal LM built from a config with random weights, e.g. hf-causal:gpt2 or hf-causal:llama
    (--model-arg n_layer=4 n_embd=256 ...; vocabulary and context come from the data)"""
    context = _text_shape(model_type, tuple(input_shape))
    config = causal_config(model_type, num_outputs, context, **args)
    transformers = import_transformers()
    try:
        lm = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"hf-causal:{model_type}: {first_line(exc)}") from None
    return CausalLM(lm)


# sized for the CPU demo (make demo-lm): on bytes (V 256), about 0.46M and 0.04M parameters
register_preset("lm-teacher", functools.partial(hf_causal, "gpt2"),
                "lm-teacher: GPT-2, 2 layers, width 128, 4 heads, 256 positions (0.46M params on bytes), no dropout",
                n_layer=2, n_embd=128, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
register_preset("lm-student", functools.partial(hf_causal, "gpt2"),
                "lm-student: GPT-2, 2 layers, width 32, 4 heads, 256 positions (1/11 of lm-teacher on bytes), no dropout",
                n_layer=2, n_embd=32, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def config_args(config) -> dict:
    """A config as the --model-arg dict that rebuilds it (JSON-safe; no vocabulary or file fields)."""
    values = json.loads(json.dumps(config.to_dict(), default=str))
    return {k: v for k, v in values.items() if k not in _VOLATILE_CONFIG_KEYS}


def load_pretrained_causal(directory: str) -> tuple[CausalLM, str, dict]:
    """A saved causal LM (save_pretrained directory), offline -> (model, model type, config args)."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise UsageError(f"Hugging Face model directory {directory!r} does not exist")
    transformers = import_transformers()
    try:
        lm = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot load causal language model {directory!r}: {first_line(exc)}") from None
    return CausalLM(lm.float().eval()), lm.config.model_type, config_args(lm.config)


def is_causal_lm_dir(directory: str) -> bool:
    """True when `directory` holds a transformers config whose architecture is a causal LM."""
    config = Path(directory).expanduser() / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)
