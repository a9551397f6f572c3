"""A user's own model, loss and arrays: --model py:..., --method py:..., --dataset npz:...; code identity
(source and hash in the artifact and the cache key), rebuilds from the stored source, and the trust rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

NETS = '''
import os
from pathlib import Path

import torch
from torch import nn

if os.environ.get("KDCLI_TEST_MARKER"):
    Path(os.environ["KDCLI_TEST_MARKER"]).write_text("executed")


class Conv(nn.Module):
    def __init__(self, input_shape, num_outputs, width=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(input_shape[0], width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool1d(2))
        self.head = nn.Linear(width * 2, num_outputs)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def mlp(input_shape, num_outputs, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], hidden), nn.ReLU(),
                         nn.Linear(hidden, num_outputs))
'''

LOSSES = '''
from dataclasses import dataclass

import torch.nn.functional as F


@dataclass
class SoftL2:
    """Squared distance of the softmax outputs plus the label cross-entropy."""
    weight: float = 1.0

    def __call__(self, student_logits, teacher_logits, labels):
        l2 = ((F.softmax(student_logits, 1) - F.softmax(teacher_logits.detach(), 1)) ** 2).sum(1).mean()
        ce = F.cross_entropy(student_logits, labels)
        return {"l2": l2, "ce": ce, "loss": ce + self.weight * l2}


@dataclass
class Leaky:
    def __call__(self, student_logits, teacher_logits, labels):
        return {"loss": ((student_logits - teacher_logits) ** 2).mean()}
'''


def write_sequences(path, n=48, n_test=24, seed=0):
    """Three classes of 2-channel sequences of length 8: a sine of the class's frequency plus noise."""
    rng = np.random.default_rng(seed)

    def draw(count):
        y = rng.integers(0, 3, count)
        t = np.linspace(0, 1, 8)
        signal = np.sin(2 * np.pi * (y[:, None] + 1) * t)
        x = np.stack([signal, 0.3 * rng.standard_normal((count, 8))], 1) + 0.2 * rng.standard_normal((count, 2, 8))
        return (3 * x + 1).astype(np.float32), y

    x, y = draw(n)
    x_test, y_test = draw(n_test)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch, cli):
    """A user's folder: nets.py, losses.py and seq.npz, as the working directory; run(*args) runs kdcli."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "losses.py").write_text(LOSSES)
    write_sequences(tmp_path / "seq.npz")
    return cli


DATA = ("--dataset", "npz:seq.npz", "--epochs", "2", "--batch-size", "16")


def ok(result):
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def refused(result, *words):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    return result.stderr


def test_an_edited_class_retrains_and_the_artifact_names_its_code(project, store, tmp_path):
    first = ok(project("train-teacher", *DATA, "--model", "py:nets.py:Conv", "--model-arg", "width=3"))
    again = project("train-teacher", *DATA, "--model", "py:nets.py:Conv", "--model-arg", "width=3")
    assert ok(again) == first and "skipped train-teacher" in again.stderr
    code = store.get(first).manifest["model"]["code"]
    assert code["files"] == {"nets.py": NETS} and code["origin"] == str(tmp_path / "nets.py")
    shown = project("artifacts", "show", first)
    assert json.loads(shown.stdout)["model"]["code"]["sha256"] == code["sha256"]
    assert f"{tmp_path / 'nets.py'} (sha256 {code['sha256'][:12]})" in shown.stderr
    (tmp_path / "nets.py").write_text(NETS.replace("padding=1", "padding=1, bias=False"))
    edited = project("train-teacher", *DATA, "--model", "py:nets.py:Conv", "--model-arg", "width=3")
    assert ok(edited) != first and f"code changed since run {first[:12]}" in edited.stderr
    assert store.get(ok(edited)).manifest["model"]["code"]["sha256"] != code["sha256"]


def test_a_moved_file_rebuilds_from_the_stored_source(project, store, tmp_path, monkeypatch):
    teacher = ok(project("train-teacher", *DATA, "--model", "py:nets.py:Conv"))
    (tmp_path / "nets.py").rename(tmp_path / "elsewhere.py")
    refused(project("cache-logits", teacher, "--dataset", "npz:seq.npz"), teacher[:12], str(tmp_path / "nets.py"),
            "--trust-code")
    logits = ok(project("cache-logits", teacher, "--dataset", "npz:seq.npz", "--trust-code"))
    monkeypatch.setenv("KDCLI_TRUST_CODE", "1")
    student = ok(project("distill", *DATA, "--model", "py:elsewhere.py:mlp", "--teacher", teacher))
    assert store.get(logits).manifest["parents"]["teacher"] == teacher
    rebuild = project("artifacts", "lineage", logits).stdout.split("rebuild, in order:")[1].splitlines()
    assert [line.strip().split()[1] for line in rebuild if line.strip()] == ["train-teacher", "cache-logits"]
    assert rebuild[-1].endswith("--trust-code") and not rebuild[1].endswith("--trust-code")
    assert store.get(student).manifest["model"]["code"]["files"] == {"elsewhere.py": NETS}


def kdcli_process(*args, marker, store_root, cwd):
    env = {**os.environ, "KDCLI_TEST_MARKER": str(marker), "KDCLI_STORE": str(store_root)}
    env.pop("KDCLI_TRUST_CODE", None)
    return subprocess.run([sys.executable, "-m", "kdcli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_trust_refusal_executes_nothing(project, store, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("KDCLI_TEST_MARKER", str(marker))
    (tmp_path / "nets.py").write_text(NETS + f"# {tmp_path}\n")  # code of its own: not imported by another test
    teacher = ok(project("train-teacher", *DATA, "--model", "py:nets.py:Conv"))
    assert marker.read_text() == "executed"  # the module's top level writes the marker when it runs
    marker.unlink()
    objects = sorted(store.ids())
    refusal = kdcli_process("cache-logits", teacher, "--dataset", "npz:seq.npz", marker=marker, store_root=store.root,
                            cwd=tmp_path)
    assert refusal.returncode == 2 and refusal.stderr.count("\n") == 1, refusal.stderr
    assert f"model artifact {teacher[:12]}" in refusal.stderr and str(tmp_path / "nets.py") in refusal.stderr
    assert not marker.exists() and sorted(store.ids()) == objects
    trusted = kdcli_process("cache-logits", teacher, "--dataset", "npz:seq.npz", "--trust-code", marker=marker,
                            store_root=store.root, cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    assert marker.read_text() == "executed"  # the same call with trust runs the stored code


def test_a_package_module_with_relative_imports(project, store, tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("from torch import nn\n\ndef block(n):\n    return nn.Linear(n, 6)\n")
    (package / "model.py").write_text(textwrap.dedent("""
        from torch import nn
        from .layers import block

        def make(input_shape, num_outputs):
            return nn.Sequential(nn.Flatten(), block(input_shape[0] * input_shape[1]), nn.Linear(6, num_outputs))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = ok(project("baseline", *DATA, "--model", "py:mypkg.model:make"))
    code = store.get(run).manifest["model"]["code"]
    assert sorted(code["files"]) == ["mypkg/__init__.py", "mypkg/layers.py", "mypkg/model.py"]
    assert code["entry"] == "mypkg.model"


def test_a_plugin_loss_through_methods_check_and_distill(project, store):
    checked = project("methods", "--check", "py:losses.py:SoftL2", "--method-arg", "weight=0.5")
    assert checked.exit_code == 0 and checked.stdout.count("ok ") == 4, checked.stdout
    leaky = project("methods", "--check", "py:losses.py:Leaky")
    assert leaky.exit_code == 1 and "FAIL  teacher not trained" in leaky.stdout
    assert "failed 1 of 4 checks: teacher not trained" in leaky.stderr
    teacher = ok(project("train-teacher", *DATA, "--model", "py:nets.py:Conv"))
    logits = ok(project("cache-logits", teacher, "--dataset", "npz:seq.npz", "--trust-code"))
    args = (*DATA, "--model", "py:nets.py:mlp", "--logits", logits, "--method", "py:losses.py:SoftL2")
    student = ok(project("distill", *args, "--method-arg", "weight=2"))
    manifest = store.get(student).manifest
    assert manifest["config"]["method_args"] == ["weight=2"] and "train_l2" in manifest["history"][0]
    assert manifest["method_code"]["files"] == {"losses.py": LOSSES}
    assert ok(project("distill", *args, "--method-arg", "weight=3")) != student
    refused(project("distill", *args, "--method-arg", "wight=2"), "bad --method-arg", "weight")
    refused(project("distill", *args, "--temperature", "2"), "--temperature is not a weight", "--method-arg")


def test_feature_methods_tap_layers_by_name_and_sweeps_take_py_models(project, store):
    teacher = ok(project("train-teacher", *DATA, "--model", "py:nets.py:Conv"))
    student = ok(project("distill", *DATA, "--model", "py:nets.py:mlp", "--teacher", teacher, "--method", "rkd",
                         "--feature-pair", "teacher.head:student.2"))
    assert store.get(student).manifest["config"]["feature_pairs"] == ["teacher.head:student.2"]
    mixed = ok(project("baseline", *DATA, "--model", "py:nets.py:mlp", "--augment", "mixup:0.4"))
    assert store.get(mixed).manifest["augment"].startswith("mixup")  # mixing works on any shape
    swept = project("sweep", "baseline", *DATA, "--model", "py:nets.py:mlp", "--grid", "lr=0.01,0.003")
    assert swept.exit_code == 0 and "2 runs, 2 trained" in swept.stderr, swept.stderr


def test_bad_user_code_and_array_inputs_are_one_line(project, tmp_path):
    refused(project("baseline", *DATA, "--model", "py:nowhere.py:Net"), "python file not found: nowhere.py")
    refused(project("baseline", *DATA, "--model", "py:nets.py:Missing"), "has no 'Missing'")
    refused(project("baseline", *DATA, "--model", "py:nets.py"), "expected py:FILE.py:NAME")
    refused(project("baseline", *DATA, "--model", "py:no_such_pkg.mod:Net"), "python module 'no_such_pkg.mod' not found")
    refused(project("baseline", *DATA, "--model", "py:nets.py:Conv", "--model-arg", "depth=3"), "bad --model-arg")
    refused(project("distill", *DATA, "--logits", "x", "--method-arg", "a=1"), "--method-arg sets a parameter")
    refused(project("methods", "--check", "kd"), "py:FILE.py:NAME")
    refused(project("baseline", "--dataset", "npz:none.npz"), "npz data set none.npz not found")
    np.savez(tmp_path / "half.npz", x=np.zeros((4, 3)), y=np.zeros(4, dtype=int))
    refused(project("baseline", "--dataset", "npz:half.npz"), "lacks x_test, y_test")
    refused(project("baseline", "--dataset", "digits", "--normalize", "none"), "--normalize applies to npz")
    refused(project("baseline", *DATA, "--normalize", "zscore"), "--normalize must be one of per-feature, none")
    refused(project("baseline", *DATA, "--model", "py:nets.py:mlp", "--augment", "flip"), "needs image data")
