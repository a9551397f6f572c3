"""Commands that need no tensors start without torch (or numpy, safetensors, scipy, matplotlib)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "safetensors", "scipy", "matplotlib", "sklearn")

PROBE = """
import json, sys
from typer.testing import CliRunner
from kdcli.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({"code": result.exit_code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize("args", [["--help"], ["artifacts", "ls"], ["artifacts", "ls", "--json"],
                                  ["artifacts", "--help"], ["baseline", "--help"]])
def test_command_does_not_import_heavy_libraries(args, store):
    # the store holds one artifact, so `ls` has a row to print
    from kdcli.models import build_model

    spec = {"name": "digits-student", "args": {}, "input_shape": [1, 8, 8], "num_outputs": 10}
    store.put("model", build_model("digits-student", (1, 8, 8), 10).state_dict(),
              {"stage": "test", "model": spec, "parents": {}})
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True,
                          check=True, env={**os.environ, "KDCLI_STORE": str(store.root)})
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "heavy": []}, done.stderr
