"""The `kdcli` command: one module per command group; a command per registered stage, generated
from the stage registry (kdcli.stages.registry) by `build_app`.

Only what `--help` needs loads here: stage descriptions, config classes and the store. Stage functions,
the engine and torch load when a command that runs work calls them, so `kdcli --help`, `kdcli artifacts
...` and other commands that need no tensors start without torch."""

from __future__ import annotations

from typing import Annotated

import typer

from kdcli.cli import artifacts, card, compare, export, generate, plot, sweep, visualize
from kdcli.cli.common import DebugOpt, KdcliGroup, execute, stage_command
from kdcli.stages.registry import STAGES


def methods(
    check: Annotated[str | None, typer.Option("--check", help="run kdcli's loss checks on your loss class "
                                              "py:FILE.py:NAME (finite, differentiable, float64 gradcheck, the "
                                              "teacher not trained) instead of listing")] = None,
    method_arg: Annotated[list[str] | None, typer.Option("--method-arg", help="--check: a parameter of the loss, "
                                                        "KEY=VALUE (repeatable)")] = None,
    debug: DebugOpt = False,
) -> None:
    """List the distillation methods 'kdcli distill --method' accepts, their weights and the schemes;
    or, with --check, test your own loss class the way every registered loss is tested."""
    if check is not None or method_arg:
        execute(lambda: check_loss(check, list(method_arg or [])), debug)
        return
    from kdcli.losses.methods import method_table  # the listings load the registries they list (torch)
    from kdcli.stages.planners import flag
    from kdcli.stages.train import SCHEMES

    for method in method_table():
        weights = " ".join(f"{flag(option)} {default:g}" for option, default in method.options.items())
        typer.echo(f"{method.name:<10} {method.needs:<44} {method.summary}")
        typer.echo(f"{'':<10} weights: {weights}")
    typer.echo("\nschemes (with any logit method):")
    for name, needs, summary in SCHEMES:
        typer.echo(f"{name:<10} {needs:<44} {summary}")
    typer.echo("\nyour own loss: --method py:FILE.py:NAME (or py:package.module:NAME), a class called as "
               "(student_logits, teacher_logits, labels) -> terms with 'loss'; its parameters --method-arg "
               "KEY=VALUE; 'kdcli methods --check py:FILE.py:NAME' tests it")


def check_loss(ref: str | None, method_args: list[str]) -> None:
    """`methods --check`: kdcli.losses.checks on the user's loss; a failed check exits 1."""
    from kdcli import usercode
    from kdcli.config import parse_kv
    from kdcli.errors import KdcliError, UsageError
    from kdcli.losses.checks import run_checks
    from kdcli.losses.plugins import build_plugin

    if not usercode.is_code_ref(ref):
        raise UsageError(f"--check takes your loss class as py:FILE.py:NAME, got {ref!r}"
                         if ref else "--method-arg goes with --check py:FILE.py:NAME")
    loss = build_plugin(ref, parse_kv(method_args, "--method-arg"))
    results = run_checks(loss, getattr(loss, "needs_teacher", True))
    for name, failure in results:
        typer.echo(f"{'ok' if failure is None else 'FAIL':<5} {name}{'' if failure is None else ': ' + failure}")
    failed = [name for name, failure in results if failure is not None]
    if failed:
        raise KdcliError(f"{ref} failed {len(failed)} of {len(results)} checks: {', '.join(failed)}")


def models() -> None:
    """List the registry models '--model' accepts, with their one-line descriptions, and the zoo families."""
    from kdcli.models import MODELS
    from kdcli.models.zoo import family_rows

    _list_registry(MODELS)
    for naming, summary in family_rows():
        typer.echo(f"{naming:<22} {summary}")
    typer.echo("zoo models take --model-arg KEY=VALUE (passed to the library), --model-arg pretrained=true "
               "(the library's hub, online) or --weights PATH")
    typer.echo(f"{'py:FILE.py:NAME':<22} your own nn.Module class or factory (also py:package.module:NAME), called "
               "with the --model-arg values and input_shape / num_outputs if it takes them; its source is stored "
               "with the model (rebuilding it from a store needs --trust-code)")


def datasets() -> None:
    """List the data sets '--dataset' accepts, with what each one is."""
    from kdcli.data import DATASET_HELP

    for usage, description in DATASET_HELP.values():
        typer.echo(f"{usage:<22} {description}")


def _list_registry(registry) -> None:
    for name in registry.names():
        doc = (registry.get(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:<22} {doc[0] if doc else ''}")


artifacts.app.command("lineage")(card.lineage_command)

# how a stage's result is shown to humans, besides its id (stages without an entry show nothing more)
SHOW = {"export": export.show}


def build_app() -> typer.Typer:
    """The kdcli Typer app: a command per registered stage (in registration order), sweep over them,
    and the other command groups."""
    application = typer.Typer(
        name="kdcli", cls=KdcliGroup, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
        help="Knowledge distillation with cached, content-addressed stages and paired statistics.",
    )
    for name in STAGES.names():
        stage_command(application, STAGES.get(name), show=SHOW.get(name))
    application.add_typer(sweep.build(STAGES), name="sweep")
    application.command("compare")(compare.command)
    application.command("card")(card.card_command)
    application.command("visualize-temperature")(visualize.command)
    application.command("generate")(generate.command)
    application.add_typer(plot.app, name="plot")
    application.add_typer(artifacts.app, name="artifacts")
    application.command("methods")(methods)
    application.command("models")(models)
    application.command("datasets")(datasets)
    return application


app = build_app()


def main() -> None:
    app()  # torch's thread count is set by the commands that load it (kdcli.cli.common.run_context)
