"""Commands that need no tensors start without torch (nor numpy, scipy, matplotlib, transformers,
sklearn or safetensors' torch half): `--help`, stage and sweep help, and `artifacts ls`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kdcli

REPO = Path(kdcli.__file__).resolve().parent.parent
HEAVY = ("torch", "numpy", "scipy", "matplotlib", "transformers", "sklearn", "safetensors.torch")

PROBE = f"""
import json, sys
from typer.testing import CliRunner
from kdcli.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({{"code": result.exit_code, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules),
                  "stdout": result.stdout}}))
"""


def probe(args: list[str], store_root: Path) -> dict:
    """Run the kdcli app on `args` in a fresh interpreter; its exit code, stdout and heavy modules loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True, check=True,
                          env={**os.environ, "KDCLI_STORE": str(store_root),
                               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["sweep", "--help"], ["distill", "--help"], ["artifacts", "ls"],
                                  ["artifacts", "ls", "--json"]])
def test_a_command_that_needs_no_tensors_loads_no_heavy_library(args, tmp_path):
    outcome = probe(args, tmp_path / "empty-store")
    assert (outcome["code"], outcome["heavy"]) == (0, [])


def test_listing_a_store_with_an_artifact_loads_no_heavy_library(store):
    import torch

    stored = store.put("model", {"w": torch.zeros(3)}, {"stage": "test", "parents": {}})
    outcome = probe(["artifacts", "ls", "--json"], store.root)
    assert (outcome["code"], outcome["heavy"]) == (0, [])
    assert [row["id"] for row in json.loads(outcome["stdout"])["artifacts"]] == [stored.id]
    plain = probe(["artifacts", "ls"], store.root)
    assert (plain["code"], plain["heavy"]) == (0, []) and stored.id[:8] in plain["stdout"]
