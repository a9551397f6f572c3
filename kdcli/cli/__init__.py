"""The `kdcli` command: one module per command group; stage commands are generated from their configs."""

from __future__ import annotations

import typer

from kdcli.cli import artifacts, compare, export, plot, sweep, visualize
from kdcli.cli.common import stage_command
from kdcli.stages.cache_logits import cache_logits
from kdcli.stages.configs import BaselineConfig, CacheLogitsConfig, DistillConfig, ImportConfig, TeacherConfig
from kdcli.stages.import_teacher import import_teacher
from kdcli.stages.train import baseline, distill, train_teacher

app = typer.Typer(
    name="kdcli", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="Knowledge distillation with cached, content-addressed stages and paired statistics.",
)

stage_command(app, "train-teacher", TeacherConfig, train_teacher,
              "Train a teacher with cross-entropy (MSE for regression) and early stopping.")
stage_command(app, "cache-logits", CacheLogitsConfig, cache_logits,
              "Store the teacher's logits for every training image (and view) as a logits artifact.",
              positional="teacher")
stage_command(app, "baseline", BaselineConfig, baseline,
              "Train the student from scratch on the labels alone.")
stage_command(app, "distill", DistillConfig, distill,
              "Train the student on the teacher's soft targets (online teacher or cached logits).")
stage_command(app, "import-teacher", ImportConfig, import_teacher,
              "Import a pretrained teacher (hf:, torchhub:, or a checkpoint file) and report its test accuracy.",
              positional="source")
export.register(app)
app.command("sweep")(sweep.command)
app.command("compare")(compare.command)
app.command("visualize-temperature")(visualize.command)
app.add_typer(plot.app, name="plot")
app.add_typer(artifacts.app, name="artifacts")


@app.command("methods")
def methods() -> None:
    """List the distillation methods 'kdcli distill --method' accepts."""
    from kdcli.stages.schemes import method_rows

    for name, needs, summary in method_rows():
        typer.echo(f"{name:<10} {needs:<46} {summary}")


@app.command("models")
def models() -> None:
    """List the registry models '--model' accepts, with their one-line descriptions, and the zoo families."""
    from kdcli.models import MODELS
    from kdcli.models.zoo import family_rows

    _list_registry(MODELS)
    for naming, summary in family_rows():
        typer.echo(f"{naming:<22} {summary}")
    typer.echo("zoo models take --model-arg KEY=VALUE (passed to the library), --model-arg pretrained=true "
               "(the library's hub, online) or --weights PATH")


@app.command("datasets")
def datasets() -> None:
    """List the data sets '--dataset' accepts."""
    from kdcli.data import DATASETS

    _list_registry(DATASETS)


def _list_registry(registry) -> None:
    for name in registry.names():
        doc = (registry.get(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:<22} {doc[0] if doc else ''}")


def main() -> None:
    app()
