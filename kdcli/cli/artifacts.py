"""`kdcli artifacts ...`: list, show, verify, garbage-collect, push and pull the store."""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import json
import os
from collections import Counter
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from kdcli.cli.common import DebugOpt, JsonOpt, StoreOpt, emit, execute, open_store
from kdcli.config import parse_kv
from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter
from kdcli.stages.registry import made_by_other_code
from kdcli.store import KINDS, MIN_PREFIX, Store, default_root
from kdcli.store.maintenance import sidecar_difference

app = typer.Typer(help="Inspect and maintain the artifact store.", no_args_is_help=True)

KEY_METRICS = ("test_bpb", "test_acc", "test_mse", "teacher_test_bpb", "teacher_test_acc", "best_mean")


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


def _short_length(ids: list[str]) -> int:
    """The shortest prefix length (>= MIN_PREFIX) that tells every id in the store apart."""
    longest = max((len(os.path.commonprefix(pair)) for pair in zip(ids, ids[1:])), default=0)
    return max(MIN_PREFIX, longest + 1)


def _seed(manifest: dict) -> str:
    seed = manifest.get("seed", (manifest.get("config") or {}).get("seed"))
    return "" if seed is None else str(seed)


def listing(st: Store, kind: str | None = None, name: str | None = None) -> list[dict]:
    """One row per artifact, read from the manifest inside the object; `sidecar_ok` is False where
    the readable sidecar disagrees with it (a hand edit, or a write interrupted in between)."""
    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown --kind {kind!r}; the kinds are {', '.join(KINDS)}")
    names: dict[str, list[str]] = {}
    for ref, target in st.refs().items():
        names.setdefault(target, []).append(ref)
    tags: dict[str, list[str]] = {}
    for tag, members in st.tags().items():
        for member in members:
            tags.setdefault(member, []).append(tag)
    rows = []
    for artifact_id in st.ids():
        manifest = st.read_manifest(artifact_id)
        refs = names.get(artifact_id, [])
        if kind and manifest.get("kind") != kind:
            continue
        if name and not any(fnmatch.fnmatch(r, name) for r in refs):
            continue
        rows.append({"id": artifact_id, "kind": manifest.get("kind", "?"), "names": refs,
                     "tags": tags.get(artifact_id, []), "seed": _seed(manifest), "stage": manifest.get("stage", ""),
                     "metric": _key_metric(manifest), "created": manifest.get("created", ""),
                     "sidecar_ok": not manifest or not sidecar_difference(st, artifact_id, manifest)})
    rows.sort(key=lambda r: r["created"])
    return rows


def listing_table(rows: list[dict], id_length: int) -> Table:
    """The `ls` table; ids cut to `id_length` characters, '!' after one whose sidecar disagrees."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    for column in ("id", "kind", "seed", "age"):
        table.add_column(column, no_wrap=True)
    for column in ("name", "tag"):
        table.add_column(column, overflow="fold")
    for column in ("stage", "key metric"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(row["id"][:id_length] + ("" if row["sidecar_ok"] else "!"), row["kind"], row["seed"],
                      _age(row["created"]), ", ".join(row["names"]), ", ".join(row["tags"]), row["stage"],
                      row["metric"])
    return table


def warn_if_missing(st: Store, reporter: Reporter) -> bool:
    """A store that does not exist holds nothing: the commands that look at a store (ls, verify, gc) say
    so with a warning and exit 0; those that need something from it (show, push) fail. True if missing."""
    if st.exists():
        return False
    reporter.warn(f"no store at {st.root}: nothing was ever stored there (check --store or KDCLI_STORE)")
    return True


@app.command("ls")
def ls(kind: Annotated[str | None, typer.Option("--kind", help=f"only this kind: {', '.join(KINDS)}")] = None,
       name: Annotated[str | None, typer.Option("--name", help="only names matching this glob")] = None,
       stale: Annotated[bool, typer.Option("--stale", help="only runs made by other code than this kdcli's "
                                                         "(their stage's code fingerprint differs)")] = False,
       store: StoreOpt = None, json_out: JsonOpt = False, debug: DebugOpt = False):
    """List artifacts on stdout: short id, kind, seed, age, names, tags, stage, key metric."""

    def run():
        st = Store(store if store is not None else default_root(), readonly=True)
        rows = [row for row in listing(st, kind, name) if not stale or made_by_other_code(st.read_manifest(row["id"]))]
        reporter = Reporter()
        warn_if_missing(st, reporter)
        if json_out:
            emit({"artifacts": rows}, True)
            return
        if not rows:
            return
        out = Console(highlight=False)
        if not out.is_terminal:  # a pipe: one line per artifact, for grep
            out = Console(highlight=False, width=1000)
        out.print(listing_table(rows, _short_length(st.ids())))
        forged = sum(not row["sidecar_ok"] for row in rows)
        if forged:
            reporter.warn(f"{forged} artifact(s) marked '!' have a sidecar that disagrees with the object; the "
                          "table shows the object's manifest; 'kdcli artifacts verify --repair' rebuilds the sidecar")

    execute(run, debug)


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="name, id or id prefix")], store: StoreOpt = None,
         debug: DebugOpt = False):
    """Print an artifact's manifest (verified) as JSON; on stderr, the py: code it holds (file and sha256)."""

    def run():
        from kdcli.usercode import describe

        artifact = Store(store if store is not None else default_root(), readonly=True).get(ref)
        manifest = artifact.manifest
        typer.echo(json.dumps({"id": artifact.id, **manifest}, indent=2, default=str))
        stored = {"model": (manifest.get("model") or {}).get("code"), "method": manifest.get("method_code")}
        for role, bundle in stored.items():
            if bundle:
                Reporter().info(f"{role} code: {describe(bundle)}")

    execute(run, debug)


PROBLEM_LABELS = {"corrupt": "corrupt object(s)", "missing-parent": "missing parent(s)",
                  "dangling-ref": "ref(s) to nothing", "dangling-tag": "tag entr(ies) to nothing",
                  "dangling-run": "run-cache entr(ies) to nothing", "sidecar": "sidecar(s) that disagree"}


@app.command("verify")
def verify(repair: Annotated[bool, typer.Option(
               "--repair", help="rebuild sidecars from the objects and prune refs, tags and cache entries to nothing")] = False,
           store: StoreOpt = None, debug: DebugOpt = False):
    """Re-hash every object; check parents, refs, tags, run cache and sidecars; exit 1 on any problem."""

    def run():
        st = Store(store if store is not None else default_root(), readonly=not repair)
        reporter = Reporter()
        if warn_if_missing(st, reporter):
            return
        problems = st.check()
        for problem in problems:
            reporter.console.print(problem.line(), markup=False)
        if repair:
            done, problems = st.repair(problems)
            for line in done:
                reporter.console.print(f"repaired: {line}", markup=False)
        if problems:
            counts = Counter(p.kind for p in problems)
            hint = ("; --repair fixes sidecars and links" if not repair and set(counts) - {"corrupt", "missing-parent"}
                    else "")
            raise KdcliError(", ".join(f"{n} {PROBLEM_LABELS[k]}" for k, n in counts.items())
                             + f" in {len(st.ids())} object(s){hint}")
        reporter.info(f"all {len(st.ids())} objects verified; parents, refs, tags, run cache and sidecars agree")

    execute(run, debug)


@app.command("gc")
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be removed, remove nothing")] = False,
       keep_checkpoints: Annotated[float | None, typer.Option(
           "--keep-checkpoints", metavar="DAYS", help="also remove checkpoints of unfinished runs older than DAYS")] = None,
       checkpoints: Annotated[bool, typer.Option(
           "--checkpoints", help="also remove every checkpoint no running stage uses")] = False,
       store: StoreOpt = None, debug: DebugOpt = False):
    """Remove what nothing reaches, corrupt objects and links to nothing, listing it first.

    Objects no name, tag, cached run or running stage reaches go (their parents are kept), so do
    corrupt objects, refs/tags/run entries to missing objects, finished checkpoints, expired leases
    and stale working files. Everything is listed on stdout before anything is removed."""

    def run():
        if keep_checkpoints is not None and keep_checkpoints < 0:
            raise UsageError("--keep-checkpoints must be a number of days >= 0")
        st = open_store(store)
        reporter = Reporter()
        if warn_if_missing(st, reporter):
            return
        plan = st.gc_plan(keep_checkpoints, checkpoints)
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


EndpointOpt = Annotated[str | None, typer.Option(
    "--endpoint-url", help="S3-compatible endpoint (MinIO, moto, ...) for s3:// remotes")]
RemoteOpts = Annotated[list[str] | None, typer.Option(
    "--remote-option", "-o", help="fsspec storage option KEY=VALUE for the remote (repeatable)")]


def _storage_options(endpoint_url: str | None, options: list[str] | None) -> dict:
    parsed = parse_kv(options or [], "--remote-option")
    if endpoint_url:
        parsed["endpoint_url"] = endpoint_url
    return parsed


def _report_transfer(transfer) -> None:
    reporter = Reporter()
    for line in transfer.updated:
        reporter.info(line)
    for line in transfer.conflicts:
        reporter.warn(f"conflict: {line}")
    for line in transfer.refused:
        reporter.console.print(f"refused: {line}", style="red", markup=False)
    reporter.info(transfer.summary())
    if transfer.refused:
        raise KdcliError(f"{len(transfer.refused)} object(s) refused: {transfer.refused[0]}")


@app.command("push")
def push(remote: Annotated[str, typer.Argument(help="fsspec URL: a path, s3://bucket/prefix, ...")],
         refs: Annotated[list[str] | None, typer.Argument(help="only these names or ids (and their parents)")] = None,
         endpoint_url: EndpointOpt = None, remote_option: RemoteOpts = None, store: StoreOpt = None,
         json_out: JsonOpt = False, debug: DebugOpt = False):
    """Send the objects the remote lacks, then refs, tags and run-cache entries.

    A newer ref on the remote is never overwritten: the conflict is reported."""

    def run():
        st = Store(store if store is not None else default_root(), readonly=True)
        if not st.exists():
            raise KdcliError(f"no store at {st.root}: nothing to push (check --store or KDCLI_STORE)")
        transfer = st.push(remote, refs or None, _storage_options(endpoint_url, remote_option))
        if json_out:
            emit(dataclasses.asdict(transfer), True)
        _report_transfer(transfer)

    execute(run, debug)


@app.command("pull")
def pull(remote: Annotated[str, typer.Argument(help="fsspec URL: a path, s3://bucket/prefix, ...")],
         refs: Annotated[list[str] | None, typer.Argument(help="only these names or ids on the remote (and their parents)")] = None,
         endpoint_url: EndpointOpt = None, remote_option: RemoteOpts = None, store: StoreOpt = None,
         json_out: JsonOpt = False, debug: DebugOpt = False):
    """Fetch the objects this store lacks (re-hashed before acceptance), then merge refs, tags, run cache.

    A corrupt remote object is refused (exit 1); a newer local ref is kept and the conflict reported."""

    def run():
        st = open_store(store)
        transfer = st.pull(remote, refs or None, _storage_options(endpoint_url, remote_option))
        if json_out:
            emit(dataclasses.asdict(transfer), True)
        _report_transfer(transfer)

    execute(run, debug)
