"""`kdcli card REF` (a Markdown model card) and `kdcli artifacts lineage REF` (the DAG and its commands)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from kdcli.cli.common import DebugOpt, StoreOpt, execute, open_store
from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter
from kdcli.stages.card import render_card
from kdcli.stages.lineage import FORMATS, RENDERERS, lineage


def lineage_command(
    ref: Annotated[str, typer.Argument(help="name, id or id prefix of any artifact")],
    format_: Annotated[str, typer.Option("--format", help="tree, mermaid or dot")] = "tree",
    store: StoreOpt = None, debug: DebugOpt = False,
):
    """Print the DAG from the data to an artifact: every stage, its resolved config, and the commands that rebuild it."""

    def run():
        if format_ not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
        root, nodes = lineage(open_store(store), ref)
        typer.echo(RENDERERS[format_](root, nodes))

    execute(run, debug)


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and a rename: never half a card."""
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise KdcliError(f"could not write {path}: {exc.strerror or exc}") from None


def card_command(
    ref: Annotated[str, typer.Argument(help="model artifact: name, id or id prefix")],
    out: Annotated[Path | None, typer.Option("--out", help="write the card to this Markdown file (default: stdout)")] = None,
    store: StoreOpt = None, debug: DebugOpt = False,
):
    """Write a Markdown model card: teacher, data, recipe, metrics with CIs over seeds, comparison, exports, lineage."""

    def run():
        text = render_card(open_store(store), ref)
        if out is None:
            typer.echo(text)
            return
        _write_text(out, text)
        Reporter().info(f"card: wrote {out}")

    execute(run, debug)
