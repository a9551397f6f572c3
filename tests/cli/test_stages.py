"""The stage registry and the runner: a registered stage is a command and sweepable; cache keys know
the code; sweep takes a stage's own flags; imports run one way and change nothing at import time."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import kdcli
from kdcli.cli import app, build_app
from kdcli.config import opt
from kdcli.stages import stage as stage_mod
from kdcli.stages.registry import STAGES
from kdcli.stages.runner import Stage, run_cached
from kdcli.stages.stage import code_fingerprint

FAST = ["--epochs", "1", "--device", "cpu", "-q"]


@dataclass
class EchoConfig:
    value: float = opt(1.0, "the test accuracy the run reports")
    seed: int = opt(0, "seed, added to the value")


def echo(cfg: EchoConfig, ctx):
    def produce(key):
        value = cfg.value + cfg.seed
        return "model", {"w": torch.tensor([cfg.value])}, {"metrics": {"test_acc": value, "val_acc": value}}

    return run_cached(ctx, ECHO, cfg, {}, produce, seed=cfg.seed)


ECHO = Stage("echo-test", EchoConfig, echo, "A throwaway stage registered by a test.", ("kdcli.stages.runner",))


@pytest.fixture
def echo_app():
    STAGES.register(ECHO.name)(ECHO)
    try:
        yield build_app()
    finally:
        STAGES.unregister(ECHO.name)


def test_a_registered_stage_is_a_command_and_sweepable(echo_app, tmp_path):
    runner_ = CliRunner()
    store = ["--store", str(tmp_path / "store")]
    out = runner_.invoke(echo_app, ["echo-test", "--value", "2.5", "--json", *store], catch_exceptions=False)
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["metrics"]["test_acc"] == 2.5
    swept = runner_.invoke(echo_app, ["sweep", "echo-test", "--grid", "value=1,3", "--seeds", "0-1", "--json",
                                      "-q", *store], catch_exceptions=False)
    assert swept.exit_code == 0, swept.stderr
    result = json.loads(swept.stdout)
    assert (result["best"], result["runs"], result["ran"]) == ("value=3", 4, 4)
    assert [s["mean"] for s in result["summary"]] == [3.5, 1.5]


def test_the_throwaway_stage_does_not_leak():
    assert ECHO.name not in STAGES
    names = {command.name for command in app.registered_commands}
    assert ECHO.name not in names and {"distill", "baseline", "train-teacher", "cache-logits"} <= names


def test_code_fingerprint_follows_the_source_bytes(tmp_path, monkeypatch):
    module = tmp_path / "numerics_probe.py"
    module.write_text("SCALE = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_fingerprint(("numerics_probe",))
    assert code_fingerprint(("numerics_probe",)) == before  # once per process: cached
    module.write_text("SCALE = 2.0\n")
    code_fingerprint.cache_clear()
    assert code_fingerprint(("numerics_probe",)) != before


def test_a_run_made_by_other_code_trains_again_and_is_listed_stale(cli, store, monkeypatch):
    first = json.loads(cli("baseline", *FAST, "--json").stdout)
    manifest = store.get(first["id"]).manifest
    assert manifest["code_fingerprint"] == STAGES.get("baseline").code_fingerprint()
    assert json.loads(cli("baseline", *FAST, "--json").stdout)["skipped"] is True
    assert json.loads(cli("artifacts", "ls", "--stale", "--json").stdout)["artifacts"] == []

    real = stage_mod.code_fingerprint
    monkeypatch.setattr(stage_mod, "code_fingerprint", lambda modules: "0" * 64 if "kdcli.engine" in modules
                        else real(modules))  # as if the engine's numerics had changed
    rerun = cli("baseline", "--epochs", "1", "--device", "cpu", "--json")
    assert rerun.exit_code == 0 and f"code changed since run {first['id'][:12]}" in rerun.stderr
    second = json.loads(rerun.stdout)
    assert second["skipped"] is False and second["id"] != first["id"]
    stale = [row["id"] for row in json.loads(cli("artifacts", "ls", "--stale", "--json").stdout)["artifacts"]]
    assert stale == [first["id"]]


def test_sweep_takes_the_stages_own_flags(cli, store):
    cli("train-teacher", *FAST, "--name", "t")
    cli("cache-logits", "t", "--device", "cpu", "-q", "--name", "tl")
    own = cli("sweep", "distill", "--logits", "tl", "--epochs", "1", "--grid", "temperature=1,4", "--seeds", "0-1",
              "--json", "--device", "cpu", "-q")
    assert own.exit_code == 0, own.stderr
    alias = cli("sweep", "--set", "logits=tl", "--set", "epochs=1", "--grid", "temperature=1,4", "--seeds", "0-1",
                "--json", "--device", "cpu", "-q")
    assert alias.exit_code == 0, alias.stderr
    a, b = json.loads(own.stdout), json.loads(alias.stdout)
    assert (a["runs"], a["ran"], b["ran"]) == (4, 4, 0)  # the alias names the same runs: all cached
    assert a["summary"] == b["summary"]
    bad = cli("sweep", "distill", "--logits", "tl", "--seed", "3")
    assert bad.exit_code == 2 and "No such option: --seed" in bad.stderr  # seeds come from --seeds


def test_importing_kdcli_changes_nothing_in_the_process():
    code = ("import torch; torch.set_num_threads(3); import kdcli.cli, kdcli.engine, kdcli.distributed; "
            "print(torch.get_num_threads())")
    env = {**os.environ, "KDCLI_THREADS": "1", "PYTHONPATH": str(Path(kdcli.__file__).parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "3"


PACKAGE = Path(kdcli.__file__).parent


def _kdcli_imports(path: Path) -> tuple[set[str], list[str]]:
    """(kdcli modules imported at module level, kdcli imports made inside functions) of one file."""
    tree = ast.parse(path.read_text())
    in_functions = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for inner in ast.walk(node)}
    top, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdcli"):
            names = {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names = {a.name for a in node.names if a.name.startswith("kdcli")}
        else:
            continue
        if id(node) not in in_functions:
            top |= names
        elif names:
            nested.append(f"{path.name}:{node.lineno}")
    return top, nested


@pytest.mark.parametrize("layer, forbidden", [
    ("stages", ("kdcli.cli", "kdcli.recipes")),
    ("engine", ("kdcli.cli", "kdcli.recipes", "kdcli.stages")),
    ("store", ("kdcli.cli", "kdcli.recipes", "kdcli.stages", "kdcli.engine")),
    ("distributed.py", ("kdcli.cli", "kdcli.recipes", "kdcli.stages", "kdcli.engine", "kdcli.store")),
    ("losses", ("kdcli.cli", "kdcli.recipes", "kdcli.stages", "kdcli.engine", "kdcli.store")),
])
def test_imports_run_downward_and_none_hides_in_a_function(layer, forbidden):
    root = PACKAGE / layer
    for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
        top, nested = _kdcli_imports(path)
        assert not [m for m in top if m.startswith(forbidden)], (path, sorted(top))
        assert nested == [], nested
