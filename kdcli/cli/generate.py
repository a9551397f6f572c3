"""`kdcli generate MODEL --prompt TEXT`: a language model's seeded continuation (kdcli.stages.generate)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from kdcli.cli.common import DebugOpt, DeviceOpt, JsonOpt, StoreOpt, execute, open_store


def command(
    model: Annotated[str, typer.Argument(help="a language-model artifact (name, id or id prefix)", show_default=False)],
    prompt: Annotated[str, typer.Option("--prompt", help="text to continue (empty: start from a newline)")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="tokens to sample")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", help="sampling temperature T (softmax(z / T))")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="sample among the k most likely tokens (0 = all)")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="seed of the sampling generator")] = 0,
    store: StoreOpt = None, device: DeviceOpt = "auto", json_out: JsonOpt = False, debug: DebugOpt = False,
):
    """Print the prompt and a seeded sample of its continuation (stdout); the same options print the same text."""

    def run():
        from kdcli.engine import apply_default_threads  # imported late: keeps `kdcli --help` fast
        from kdcli.stages.common import resolve_device
        from kdcli.stages.generate import GenerateConfig, generate

        cfg = GenerateConfig(model=model, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, seed=seed)
        cfg.validate()
        st = open_store(store)
        apply_default_threads()
        result = generate(cfg, st, resolve_device(device))
        if json_out:
            sys.stdout.write(json.dumps(result) + "\n")
        else:
            sys.stdout.write(result["text"] + "\n")

    execute(run, debug)
