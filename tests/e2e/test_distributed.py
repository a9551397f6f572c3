"""Two CPU ranks (gloo) under torch.distributed.run give the single-process result of the same global
batch; rank 0 alone writes the artifact, whose manifest records the world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.store import Store

COMMON = ["--epochs", "2", "--device", "cpu", "--augment", "none", "--seed", "5", "--batch-size", "50"]

# one launch, several runs: each rank calls the CLI in turn inside the same process group
LAUNCHED = textwrap.dedent("""
    import json, sys
    from kdcli.cli import app
    for args in json.loads(sys.argv[1]):
        app(args, standalone_mode=False)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invoke(store, *args):
    result = CliRunner().invoke(app, [*map(str, args), "--store", str(store), "--json", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    store_root = tmp_path / "store"
    invoke(store_root, "train-teacher", "--epochs", "1", "--device", "cpu", "--name", "t")
    invoke(store_root, "cache-logits", "t", "--device", "cpu", "--dtype", "float32", "--name", "tl")
    runs = [["distill", "--logits", "tl", *COMMON, "--name", "ddp", "--store", str(store_root), "-q"],
            ["distill", "--teacher", "t", "--method", "crd", "--crd-negatives", "64", *COMMON, "--epochs", "1",
             "--name", "ddp-crd", "--store", str(store_root), "-q"]]
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHED)
    env = {**os.environ, "KDCLI_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), json.dumps(runs)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    store = Store(store_root)
    ddp = store.get("ddp")
    assert ddp.manifest["world_size"] == 2 and ddp.manifest["parents"]["world_size"] == "2"
    assert store.get("ddp-crd").manifest["world_size"] == 2
    models = [i for i in store.ids() if store.read_manifest(i).get("kind") == "model"]
    assert len(models) == 3  # the teacher and one artifact per launched run: rank 1 wrote nothing

    single = store.get(invoke(store_root, "distill", "--logits", "tl", *COMMON)["id"])
    assert "world_size" not in single.manifest
    for key, value in single.tensors().items():
        torch.testing.assert_close(ddp.tensors()[key], value, rtol=1e-4, atol=1e-5)
    for a, b in zip(single.manifest["history"], ddp.manifest["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
