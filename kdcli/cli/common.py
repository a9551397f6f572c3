"""Shared CLI machinery: option aliases, one-line errors, and commands generated from config dataclasses.

A stage command is declared once, as its config dataclass: `stage_command` turns every field into a
flag (help text from the field), adds the common options, and calls the stage function. stdout gets
the artifact id alone on its last line (or --json); everything for humans goes to stderr.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kdcli import config as config_mod
from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter
from kdcli.store import Store, default_root

StoreOpt = Annotated[Path | None, typer.Option("--store", help="artifact store root [env KDCLI_STORE, default ./artifacts]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a machine-readable result on stdout")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="no progress or logs on stderr")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps")]
NameOpt = Annotated[str | None, typer.Option("--name", help="name the report (refs/NAME), which also keeps it from gc")]


def open_store(path: Path | None) -> Store:
    return Store(path if path is not None else default_root())


def fail(message: str, code: int) -> typer.Exit:
    Reporter().console.print(f"error: {' '.join(str(message).split())}", style="red", markup=False, highlight=False)
    return typer.Exit(code)


def execute(action: Callable[[], Any], debug: bool) -> Any:
    """Run `action`; turn any failure into one line on stderr and an exit code (2 usage, 1 run)."""
    try:
        return action()
    except (typer.Exit, typer.Abort):
        raise
    except KdcliError as exc:
        if debug:
            raise
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted; the last completed epoch is checkpointed: rerun the same command to resume",
                   130) from None
    except Exception as exc:  # anything unforeseen still ends in one line without --debug
        if debug:
            raise
        raise fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1) from None


def emit(result: dict, as_json: bool, store: Store | None = None, name: str | None = None) -> None:
    """The result on stdout: JSON, or the artifact id alone on the last line; `name` it in `store` first."""
    if name and store is not None and result.get("id"):
        store.set_ref(name, result["id"])
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    elif result.get("id"):
        typer.echo(result["id"])


def _cli_parameter(field: dataclasses.Field, tp) -> inspect.Parameter:
    base, _ = config_mod._unwrap_optional(tp)
    flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    help_text = f"{field.metadata.get('help', '')} [default: {default}]"
    if base is bool:
        annotation, option = bool | None, typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
    elif typing.get_origin(base) is list and typing.get_args(base) in ((str,), ()):
        annotation, option = list[str] | None, typer.Option(None, flag, help=help_text, show_default=False)
    elif typing.get_origin(base) is list:
        annotation, option = str | None, typer.Option(None, flag, help=help_text + " (comma separated)", show_default=False)
    else:
        annotation, option = base | None, typer.Option(None, flag, help=help_text, show_default=False)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


_COMMON = [
    ("config_file", Path | None, typer.Option(None, "--config", help="YAML file of defaults; flags override")),
    ("name", str | None, typer.Option(None, "--name", help="name the result (refs/NAME)")),
    ("tag", list[str] | None, typer.Option(None, "--tag", help="tag the result (repeatable)")),
    ("force", bool, typer.Option(False, "--force", help="rerun even if an identical run is cached")),
    ("store", Path | None, typer.Option(None, "--store", help="artifact store root [env KDCLI_STORE, default ./artifacts]")),
    ("device", str, typer.Option("auto", "--device", help="auto, cpu, cuda or mps")),
    ("json_out", bool, typer.Option(False, "--json", help="print a machine-readable result on stdout")),
    ("quiet", bool, typer.Option(False, "-q", "--quiet", help="no progress or logs on stderr")),
    ("debug", bool, typer.Option(False, "--debug", help="show tracebacks")),
]


def stage_command(app: typer.Typer, name: str, config_cls, stage_fn, help_text: str,
                  positional: str | None = None, show: Callable[[Any], None] | None = None) -> None:
    """Register `kdcli NAME`: flags from `config_cls` fields, then `stage_fn(config, RunContext)`.

    `positional` names a field that is also accepted as the first argument (e.g. the teacher ref);
    `show(result)` prints the stage's result for humans (on stderr, even with -q).
    """
    from kdcli.stages.common import RunContext, resolve_device

    types_ = config_mod.field_types(config_cls)
    fields = dataclasses.fields(config_cls)
    params = [_cli_parameter(f, types_[f.name]) for f in fields]
    if positional:
        params.insert(0, inspect.Parameter(f"{positional}_arg", inspect.Parameter.KEYWORD_ONLY, default=typer.Argument(
            None, help=f"same as --{positional.replace('_', '-')}", show_default=False), annotation=str | None))
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=a) for n, a, o in _COMMON]

    def command(**kwargs):
        common = {n: kwargs.pop(n) for n, _, _ in _COMMON}
        if positional:
            given = kwargs.pop(f"{positional}_arg")
            if given and kwargs.get(positional):
                raise fail(f"give the {positional} once, as an argument or as --{positional}", 2)
            kwargs[positional] = given or kwargs.get(positional)

        def run():
            cfg = config_mod.build(config_cls, common["config_file"], kwargs)
            reporter = Reporter(quiet=common["quiet"])
            ctx = RunContext(store=open_store(common["store"]), device=resolve_device(common["device"]),
                             reporter=reporter, force=common["force"], name=common["name"],
                             tags=list(common["tag"] or []))
            result = stage_fn(cfg, ctx)
            if show is not None:
                show(result)
            emit({"id": result.id, "kind": result.artifact.kind, "stage": name, "skipped": result.skipped,
                  "name": common["name"], "metrics": result.metrics}, common["json_out"])

        execute(run, common["debug"])

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = help_text
    app.command(name, help=help_text)(command)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)
