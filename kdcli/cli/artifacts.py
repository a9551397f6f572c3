"""`kdcli artifacts ...`: list, show, verify and garbage-collect the store."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.table import Table

from kdcli.cli.common import DebugOpt, JsonOpt, StoreOpt, emit, execute, open_store
from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter

app = typer.Typer(help="Inspect and maintain the artifact store.", no_args_is_help=True)

KEY_METRICS = ("test_acc", "test_mse", "teacher_test_acc", "best_mean")


def _age(created: str) -> str:
    try:
        seconds = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(created)).total_seconds()
    except (TypeError, ValueError):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _key_metric(manifest: dict) -> str:
    metrics = manifest.get("metrics") or {}
    for key in KEY_METRICS:
        if isinstance(metrics.get(key), (int, float)):
            return f"{key} {metrics[key]:.4g}"
    return ""


@app.command("ls")
def ls(kind: Annotated[str | None, typer.Option("--kind", help="only this kind")] = None,
       name: Annotated[str | None, typer.Option("--name", help="only names matching this glob")] = None,
       store: StoreOpt = None, json_out: JsonOpt = False, debug: DebugOpt = False):
    """List artifacts: id prefix, kind, name, stage, key metric, age."""

    def run():
        import fnmatch

        st = open_store(store)
        names: dict[str, list[str]] = {}
        for ref, target in st.refs().items():
            names.setdefault(target, []).append(ref)
        rows = []
        for artifact_id in st.ids():
            manifest = st.read_manifest(artifact_id)
            refs = names.get(artifact_id, [])
            if kind and manifest.get("kind") != kind:
                continue
            if name and not any(fnmatch.fnmatch(r, name) for r in refs):
                continue
            rows.append({"id": artifact_id, "kind": manifest.get("kind", "?"), "names": refs,
                         "stage": manifest.get("stage", ""), "metric": _key_metric(manifest),
                         "created": manifest.get("created", "")})
        rows.sort(key=lambda r: r["created"])
        if json_out:
            emit({"artifacts": rows}, True)
            return
        table = Table(title=f"artifacts in {st.root}")
        for column in ("id", "kind", "name", "stage", "key metric", "age"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["id"][:12], row["kind"], ", ".join(row["names"]), row["stage"], row["metric"],
                          _age(row["created"]))
        Reporter().print(table)

    execute(run, debug)


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="name, id or id prefix")], store: StoreOpt = None,
         debug: DebugOpt = False):
    """Print an artifact's manifest (verified) as JSON."""

    def run():
        artifact = open_store(store).get(ref)
        typer.echo(json.dumps({"id": artifact.id, **artifact.manifest}, indent=2, default=str))

    execute(run, debug)


@app.command("verify")
def verify(store: StoreOpt = None, debug: DebugOpt = False):
    """Re-hash every object; exit 1 if any is corrupt."""

    def run():
        st = open_store(store)
        bad = st.verify()
        reporter = Reporter()
        for artifact_id in bad:
            reporter.console.print(f"corrupt: {artifact_id} ({st.object_path(artifact_id)})", markup=False)
        if bad:
            raise KdcliError(f"{len(bad)} corrupt object(s) of {len(st.ids())}")
        reporter.info(f"all {len(st.ids())} objects verified")

    execute(run, debug)


@app.command("gc")
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be removed, remove nothing")] = False,
       keep_checkpoints: Annotated[float | None, typer.Option(
           "--keep-checkpoints", metavar="DAYS", help="also remove checkpoints of unfinished runs older than DAYS")] = None,
       checkpoints: Annotated[bool, typer.Option(
           "--checkpoints", help="also remove every checkpoint no running stage uses")] = False,
       store: StoreOpt = None, debug: DebugOpt = False):
    """Remove objects no name, tag, cached run or running stage reaches (their parents are kept),
    corrupt objects, links to missing objects, finished checkpoints and stale working files.
    Everything is listed on stdout first."""

    def run():
        if keep_checkpoints is not None and keep_checkpoints < 0:
            raise UsageError("--keep-checkpoints must be a number of days >= 0")
        st = open_store(store)
        plan = st.gc_plan(keep_checkpoints, checkpoints)
        reporter = Reporter()
        for line in plan.lines():
            typer.echo(line)
        if plan.leased:
            reporter.info(f"kept {len(plan.leased)} unreferenced object(s) a running stage holds a lease on")
        if dry_run:
            reporter.info(f"would remove {len(plan.lines())} item(s), {len(plan.objects)} of them objects (--dry-run)")
            return
        removed = st.apply_gc(plan)
        skipped = len(plan.lines()) - len(removed.lines())
        reporter.info(f"removed {len(removed.lines())} item(s), {len(removed.objects)} of them objects"
                      + (f"; kept {skipped} that came into use meanwhile" if skipped else ""))

    execute(run, debug)
