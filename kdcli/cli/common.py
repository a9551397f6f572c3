"""Shared CLI machinery: option aliases, one-line errors, and commands generated from config dataclasses.

A stage command is declared once, as its registered Stage (kdcli.stages.registry): `stage_command`
turns every field of its config into a flag (help text from the field), adds the common options,
refuses removed flags with their hint, and calls the stage. stdout gets
the artifact id alone on its last line (or --json); everything for humans goes to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import markup
from typer.core import TyperGroup

from kdcli import config as config_mod
from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter
from kdcli.stages.stage import Stage
from kdcli.store import Store, check_ref_name, check_tag, default_root
from kdcli.tracking import TrackingReporter, parse_tracker, tracked_run

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

StoreOpt = Annotated[Path | None, typer.Option("--store", help="artifact store root [env KDCLI_STORE, default ./artifacts]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a machine-readable result on stdout")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="no progress or logs on stderr")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps")]
TRUST_HELP = ("run stored Python code (py: models and methods) that this command did not name: a teacher an "
              "earlier command trained, a store someone else wrote [env KDCLI_TRUST_CODE=1]")
TrustOpt = Annotated[bool, typer.Option("--trust-code", help=TRUST_HELP)]
TRACK_HELP = "log the run to tensorboard:DIR or mlflow:URI (repeatable)"
NameOpt = Annotated[str | None, typer.Option("--name", help="name the report (refs/NAME), which also keeps it from gc")]


def open_store(path: Path | None, write: bool = False) -> Store:
    """The store at `path` (default: KDCLI_STORE or ./artifacts), checked first (see check_store_root)."""
    root = Path(path) if path is not None else default_root()
    check_store_root(root, write)
    return Store(root)


def check_store_root(root: Path, write: bool) -> None:
    """A store root is a directory (or not there yet, under directories); with `write`, one we may write to.

    Writability is probed with an unnamed temporary file, so nothing is left behind."""
    where = f"store {root} (--store or KDCLI_STORE)"
    if root.exists() and not root.is_dir():
        raise UsageError(f"{where} is a file, not a directory")
    existing = _existing_ancestor(root, where)
    if write:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            raise UsageError(f"{where} is not writable: {existing}: {exc.strerror or exc}") from None


def _existing_ancestor(path: Path, what: str) -> Path:
    """The nearest part of `path` (itself included) that exists; it must be a directory."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise UsageError(f"{what}: {part} is a file, not a directory")
            return part
    return Path(os.curdir)


def check_out_file(path: Path | None, flag: str) -> None:
    """A file to write (a PNG, a CSV): not an existing directory, and not below a file."""
    if path is None:
        return
    if Path(path).is_dir():
        raise UsageError(f"{flag} {path} is a directory; {flag} takes a file name")
    _existing_ancestor(Path(path).parent, f"{flag} {path}")


def check_out_dir(path: Path | None, flag: str) -> None:
    """A directory to write into: not an existing file, and not below a file."""
    if path is None:
        return
    if Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"{flag} {path} is a file; {flag} takes a directory")
    _existing_ancestor(Path(path), f"{flag} {path}")


def check_names(name: str | None, tags: list[str] | None = None) -> None:
    """--name and every --tag are checked before any work, not when the result is stored."""
    if name is not None:
        check_ref_name(name)
    for tag in tags or []:
        check_tag(tag)


def check_device_options(cfg, device) -> None:
    """Options that act on CUDA only are refused elsewhere rather than ignored (they would still change
    the cache key)."""
    precision = getattr(cfg, "precision", "fp32")
    if precision != "fp32" and device.type != "cuda":
        raise UsageError(f"--precision {precision} autocasts on CUDA only; on {device.type} use --precision fp32 "
                         "(or --device cuda)")
    if getattr(cfg, "compile", False) and device.type != "cuda":
        raise UsageError(f"--compile applies on CUDA only; drop it on {device.type} (or use --device cuda)")


def fail(message: str, code: int) -> typer.Exit:
    Reporter().console.print(f"error: {' '.join(str(message).split())}", style="red", markup=False, highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """Click's usage errors (an unknown flag, `--epochs abc`, a missing argument) as kdcli's one line, exit 2."""
    try:
        yield
    except click_exceptions.UsageError as exc:
        if isinstance(exc, getattr(click_exceptions, "NoArgsIsHelpError", ())):
            raise  # `kdcli` alone prints the help
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        raise fail(exc.format_message().rstrip(".") + hint, 2) from None


class KdcliGroup(TyperGroup):
    """The top-level command group: parse errors of it and of every subcommand come out as one line."""

    def make_context(self, info_name, args, parent=None, **extra):
        with one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with one_line_usage_errors():
            return super().invoke(ctx)


def execute(action: Callable[[], Any], debug: bool, trust_code: bool = False) -> Any:
    """Run `action`; turn any failure into one line on stderr and an exit code (2 usage, 1 run).
    The invocation starts with no py: code named yet, trusting stored code as `trust_code` says."""
    from kdcli import usercode

    usercode.TRUST.reset(trust_code)
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
        torch = sys.modules.get("torch")  # loaded by any command that could run out of GPU memory
        if torch is not None and isinstance(exc, torch.OutOfMemoryError):
            raise fail("out of GPU memory: lower --batch-size or --eval-batch-size, or use --precision bf16 "
                       f"({str(exc).splitlines()[0] if str(exc) else 'CUDA'})", 1) from None
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
    # the flag's own default is None (so that given flags can be told apart): the help text shows the
    # config's default, escaped from rich markup, which would otherwise swallow "[default: ...]"; a field
    # whose default is None (unset: the method's or data set's own value) says that value in its help
    help_text = field.metadata.get("help", "")
    if default is not None:
        help_text += " " + markup.escape(f"[default: {_default_text(default)}]")
    shown = {"show_default": False}
    if base is bool:
        annotation, option = bool | None, typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_text, **shown)
    elif typing.get_origin(base) is list and typing.get_args(base) in ((str,), ()):
        annotation, option = list[str] | None, typer.Option(None, flag, help=help_text, **shown)
    elif typing.get_origin(base) is list:
        annotation, option = str | None, typer.Option(None, flag, help=help_text + " (comma separated)", **shown)
    else:
        annotation, option = base | None, typer.Option(None, flag, help=help_text, **shown)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _default_text(default) -> str:
    if default == []:
        return "none"
    if isinstance(default, bool):
        return "yes" if default else "no"
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default)


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
    ("trust_code", bool, typer.Option(False, "--trust-code", help=TRUST_HELP)),
    ("track", list[str] | None, typer.Option(None, "--track", help=TRACK_HELP)),
]


def removed_options(removed: dict[str, str]) -> list[inspect.Parameter]:
    """Hidden flags that no longer exist: given, they fail with their one-line hint (exit 2)."""
    return [inspect.Parameter(f"removed_{i}", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, flag, hidden=True, help=hint)) for i, (flag, hint) in enumerate(removed.items())]


def refuse_removed(kwargs: dict, removed: dict[str, str]) -> None:
    """Pop the hidden removed flags from `kwargs`; one that was given ends the command with its hint."""
    for i, hint in enumerate(removed.values()):
        if kwargs.pop(f"removed_{i}"):
            raise fail(hint, 2)


def config_parameters(config_cls, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One CLI parameter per field of `config_cls` (help text from the field), all defaulting to None."""
    types_ = config_mod.field_types(config_cls)
    return [_cli_parameter(f, types_[f.name]) for f in dataclasses.fields(config_cls) if f.name not in skip]


def run_context(common: dict):
    """The kdcli.stages.common.RunContext of a command's common options; torch's thread count is set
    (kdcli.engine.apply_default_threads) and the device resolved (and, under torchrun on CUDA, this rank's
    GPU pinned) before any stage moves a model to it. Imported here: commands that run nothing start
    without torch."""
    from kdcli import distributed
    from kdcli.engine import apply_default_threads
    from kdcli.stages.common import RunContext, resolve_device

    apply_default_threads()
    device = resolve_device(common["device"])
    device = distributed.pin_local_gpu(device)
    return RunContext(store=open_store(common["store"], write=True), device=device, reporter=Reporter(quiet=common["quiet"]),
                      force=common["force"], name=common["name"], tags=list(common["tag"] or []))


def stage_command(app: typer.Typer, stage: Stage, show: Callable[[Any], None] | None = None) -> None:
    """Register `kdcli NAME` for a registered stage: flags from its config fields, then `stage.run(config, RunContext)`.

    `stage.positional` names a field that is also accepted as the first argument (e.g. the teacher ref);
    `show(result)` prints the stage's result for humans (on stderr, even with -q).
    """
    positional = stage.positional
    params = config_parameters(stage.config)
    if positional:
        params.insert(0, inspect.Parameter(f"{positional}_arg", inspect.Parameter.KEYWORD_ONLY, default=typer.Argument(
            None, help=f"same as --{positional.replace('_', '-')}", show_default=False), annotation=str | None))
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=a) for n, a, o in _COMMON]
    params += removed_options(stage.removed)

    def command(**kwargs):
        refuse_removed(kwargs, stage.removed)
        common = {n: kwargs.pop(n) for n, _, _ in _COMMON}
        if positional:
            given = kwargs.pop(f"{positional}_arg")
            if given and kwargs.get(positional):
                raise fail(f"give the {positional} once, as an argument or as --{positional}", 2)
            kwargs[positional] = given or kwargs.get(positional)

        def run():
            trackers = [parse_tracker(spec) for spec in common["track"] or []]
            check_names(common["name"], common["tag"])
            cfg = config_mod.build(stage.config, common["config_file"], kwargs)
            ctx = run_context(common)
            check_device_options(cfg, ctx.device)
            if trackers:
                ctx.reporter = TrackingReporter(trackers, common["quiet"])
            with tracked_run(ctx.reporter, common["name"] or stage.name, config_mod.to_dict(cfg)) as produced:
                result = stage(cfg, ctx)
                produced.append(result.artifact)
            if show is not None:
                show(result)
            emit({"id": result.id, "kind": result.artifact.kind, "stage": stage.name, "skipped": result.skipped,
                  "name": common["name"], "metrics": result.metrics}, common["json_out"])

        execute(run, common["debug"], common["trust_code"])

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = stage.help
    app.command(stage.name, help=stage.help)(command)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)
