"""`kdcli visualize-temperature SOURCE`: softmax(z/T) of test samples, as PNGs and as terminal bars."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdcli.cli.common import (
    DebugOpt,
    DeviceOpt,
    JsonOpt,
    NameOpt,
    QuietOpt,
    StoreOpt,
    TrustOpt,
    check_names,
    check_out_dir,
    emit,
    execute,
    open_store,
)
from kdcli.errors import UsageError
from kdcli.reporting import Reporter


def bars_table(sample: dict, names: list[str], temperatures: list[float], width: int = 80) -> Table:
    """One row per class, one column per T: a bar of '█' proportional to the probability; entropy last."""
    bar = max(4, min(20, (width - 20) // len(temperatures) - 10))
    true, predicted = sample["true_class"], sample["predicted"]
    if "prompt" in sample:  # a language model: the most likely next tokens after the prompt
        table = Table(title=f"next token after {sample['prompt']!r} (the {len(names)} most likely)")
        table.add_column("token")
    else:
        table = Table(title=f"test sample {sample['index']}: true {names[true]}, predicted {names[predicted]}")
        table.add_column("class")
    for t in temperatures:
        table.add_column(f"T={t:g}")
    for k, name in enumerate(names):
        mark = " (true)" if k == true else " (predicted)" if k == predicted else ""
        style = "red" if k == true else "green" if k == predicted else None
        cells = [f"{'█' * round(probs[k] * bar):<{bar}} {probs[k]:.3f}" for probs in sample["probabilities"]]
        table.add_row(name + mark, *cells, style=style)
    table.add_row("entropy (nats)", *(f"{h:.3f}" for h in sample["entropy"]), end_section=True)
    return table


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} expects finite numbers, got {text!r}")
    return values


def command(
    source: Annotated[str, typer.Argument(help="a teacher model artifact, or a logits artifact (its cached test logits)", show_default=False)],
    temperatures: Annotated[str, typer.Option("--temperatures", help="comma-separated T values")] = "1,5,10",
    index: Annotated[int, typer.Option("--index", help="test-set sample (0-based)")] = 0,
    count: Annotated[int, typer.Option("--count", help="number of consecutive samples from --index")] = 1,
    dataset: Annotated[str | None, typer.Option("--dataset", help="model sources: data set to draw from (default: the model's)")] = None,
    out: Annotated[Path, typer.Option("--out", help="directory of the PNGs")] = Path("figures"),
    prompt: Annotated[str | None, typer.Option("--prompt", help="language models: the text whose next-token distribution is shown")] = None,
    name: NameOpt = None, store: StoreOpt = None, device: DeviceOpt = "auto", json_out: JsonOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False, trust_code: TrustOpt = False,
):
    """softmax(z/T) of test samples per temperature, as PNGs and terminal bars; prints the report id.

    The true class and a different predicted class are highlighted; the entropy at each T is shown.
    """

    def run():
        from kdcli.engine import apply_default_threads  # imported late: keeps `kdcli --help` fast
        from kdcli.stages.common import resolve_device
        from kdcli.stages.visualize import TemperatureViewConfig, temperature_view

        check_names(name)
        check_out_dir(out, "--out")
        cfg = TemperatureViewConfig(source=source, temperatures=parse_floats(temperatures, "--temperatures"),
                                    index=index, count=count, dataset=dataset, out=str(out), prompt=prompt)
        st = open_store(store, write=True)
        apply_default_threads()
        result = temperature_view(cfg, st, resolve_device(device))
        reporter = Reporter(quiet=quiet)
        for sample in result["samples"]:
            reporter.console.print(bars_table(sample, result["class_names"], result["temperatures"],
                                              reporter.console.width))
            reporter.info(f"wrote {sample['figure']}")
        emit(result, json_out, st, name)

    execute(run, debug, trust_code)
