"""The multi-node launch the README documents, on one node: `torchrun --nnodes 1 --nproc_per_node 2` with
c10d rendezvous runs `kdcli distill` as 2 gloo ranks against a store given by its path (the directory
every node shares). Both ranks load the image folder, which is decoded once into that store; rank 0
alone writes the result, and every rank prints its id; pushed to a file:// remote, the run pulls
into another store with the same id."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invoke(store, *args) -> None:
    result = CliRunner().invoke(app, [*map(str, args), "--store", str(store)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr


def launch(shared, folder, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDCLI_THREADS": "1", "OMP_NUM_THREADS": "1", "KDCLI_DIST_BACKEND": "gloo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "kdcli-test",
               "-m", "kdcli", "distill", "--logits", "tl", "--dataset", f"imagefolder:{folder}", "--image-size", "16",
               "--model", "cnn-small", "--epochs", "1", "--device", "cpu", "--store", str(shared), "-q", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_torchrun_ranks_share_the_store_by_path(tmp_path, make_image_folder):
    shared = tmp_path / "shared-store"  # on a cluster: a directory every node mounts
    folder = make_image_folder(tmp_path / "images")
    common = ["--dataset", f"imagefolder:{folder}", "--image-size", "16", "--device", "cpu", "-q"]
    invoke(shared, "train-teacher", *common, "--model", "cnn-small", "--epochs", "1", "--name", "t")
    invoke(shared, "cache-logits", "t", *common, "--name", "tl")
    store = Store(shared)
    before = set(store.ids())

    first = launch(shared, folder, "--name", "ddp")
    assert first.returncode == 0, first.stderr[-3000:]
    written = set(store.ids()) - before
    assert len(written) == 1  # rank 0 alone wrote; the prepared data was already in the shared store
    (run_id,) = written
    manifest = store.get(run_id).manifest
    assert manifest["world_size"] == 2 and store.resolve("ddp") == run_id
    assert manifest["data_fingerprint"] == store.get("tl").manifest["data_fingerprint"]
    assert first.stdout.split() == [run_id, run_id]  # every rank prints the id rank 0 stored

    # after the launch, the shared store goes to a remote, from which another machine pulls the run
    remote = f"file://{tmp_path / 'remote'}"
    invoke(shared, "artifacts", "push", remote, "ddp")
    laptop = tmp_path / "laptop-store"
    invoke(laptop, "artifacts", "pull", remote, "ddp")
    assert Store(laptop).resolve("ddp") == run_id and Store(laptop).get(run_id).manifest["world_size"] == 2

