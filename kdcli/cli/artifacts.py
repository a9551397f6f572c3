"""`kdcli artifacts ...`: list, show, verify and garbage-collect the store."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.table import Table

from kdcli.cli.common import DebugOpt, JsonOpt, StoreOpt, emit, execute, open_store
from kdcli.errors import KdcliError
from kdcli.reporting import Reporter
from kdcli.stages.registry import made_by_other_code

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
       stale: Annotated[bool, typer.Option("--stale", help="only runs made by other code than this kdcli's "
                                                         "(their stage's code fingerprint differs)")] = False,
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
            if stale and not made_by_other_code(manifest):
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
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be removed")] = False,
       store: StoreOpt = None, debug: DebugOpt = False):
    """Remove objects that no name, tag or cached run reaches (parents of reachable ones are kept)."""

    def run():
        removed = open_store(store).gc(dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        Reporter().info(f"{verb} {len(removed)} object(s)")
        for artifact_id in removed:
            typer.echo(artifact_id)

    execute(run, debug)
