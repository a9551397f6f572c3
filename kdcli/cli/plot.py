"""`kdcli plot ...`: figures drawn from stored runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from kdcli.cli.common import (
    DebugOpt,
    JsonOpt,
    NameOpt,
    QuietOpt,
    StoreOpt,
    check_names,
    check_out_file,
    emit,
    execute,
    open_store,
)
from kdcli.cli.compare import GROUP_HELP
from kdcli.reporting import Reporter
from kdcli.store import Store

app = typer.Typer(help="Figures drawn from stored runs, recorded as report artifacts.", no_args_is_help=True)


def draw(figure: Callable[[Store], dict], out: Path, name: str | None, store: Path | None, json_out: bool,
         quiet: bool, debug: bool) -> None:
    """Check the options, draw `figure(store)` (which writes `out` and returns its report), print its id."""

    def run():
        check_names(name)
        check_out_file(out, "--out")
        st = open_store(store, write=True)
        result = figure(st)
        Reporter(quiet=quiet).info(f"wrote {out}")
        emit(result, json_out, st, name)

    execute(run, debug)


@app.command("curves")
def curves(
    runs: Annotated[list[str], typer.Argument(help=f"runs to draw; each a model ref or a group: {GROUP_HELP}", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="PNG to write")] = Path("curves.png"),
    name: NameOpt = None, store: StoreOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
    debug: DebugOpt = False,
):
    """Train/validation loss and validation accuracy (or MSE) per epoch. Prints the report artifact id."""

    def figure(st: Store) -> dict:
        from kdcli.stages.groups import resolve_group  # imported late: keeps `kdcli --help` fast
        from kdcli.stages.visualize import training_curves  # imported late: keeps `kdcli --help` fast

        labelled = {}
        for spec in runs:
            found = resolve_group(st, spec)
            for artifact in found:
                labelled[spec if len(found) == 1 else f"{spec} seed {artifact.manifest.get('seed')}"] = artifact
        return training_curves(labelled, out, st)

    draw(figure, out, name, store, json_out, quiet, debug)


@app.command("synthetic")
def synthetic(
    ref: Annotated[str, typer.Argument(help="a synthesize artifact (name, id or id prefix)", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="PNG to write")] = Path("synthetic.png"),
    per_class: Annotated[int, typer.Option("--per-class", help="images per class (row)")] = 8,
    name: NameOpt = None, store: StoreOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
    debug: DebugOpt = False,
):
    """A grid of synthesized inputs, one row per class the teacher gives them. Prints the report artifact id."""

    def figure(st: Store) -> dict:
        from kdcli.stages.visualize import synthetic_grid  # imported late: keeps `kdcli --help` fast

        return synthetic_grid(st, ref, out, per_class)

    draw(figure, out, name, store, json_out, quiet, debug)
