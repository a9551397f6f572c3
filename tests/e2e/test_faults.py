"""Fault tests (issue 7): whatever happens to a run, nothing is lost and nothing wrong is used.

- crash and resume: SIGKILL mid-training, then Ctrl-C (SIGINT) in the resumed run, then a third run
  that finishes: bit-identical to an uninterrupted run (CPU, fixed seed); a run killed after early
  stopping does not train on when resumed
- concurrency: two processes on one stage key (one runs, one waits and hits the cache) beside a
  third on another key; ref writes are atomic under concurrent writers
- integrity: a flipped byte or a truncated object stops every reader with its id; verify names it
- bad inputs: one line on stderr, exit 2 (usage) or 1 (run), no traceback; a non-finite loss and a
  full disk among them
- untrusted files: pickles that would run code are refused (checkpoints, resume state, import-teacher),
  and so are torch.hub and Hugging Face remote code without --trust-remote-code

The plain cases of tests/e2e/test_pipeline.py::test_bad_inputs_give_one_line and tests/unit/test_store.py are
not repeated here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from kdcli.config import build
from kdcli.errors import UsageError
from kdcli.models import build_model
from kdcli.stages.configs import BaselineConfig
from kdcli.stages.registry import STAGES
from kdcli.store import Store

REPO = Path(__file__).resolve().parents[2]
CPU = ["--device", "cpu"]


# ---- helpers -----------------------------------------------------------------------------------

def _as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default, as for a command typed at a terminal. A suite
    started as a background job (`make test &`, nohup) inherits SIGINT ignored, and kdcli rightly
    leaves an ignored signal ignored, so without this the Ctrl-C test would test nothing and fail."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(args: list[str], root: Path) -> subprocess.Popen:
    """`python -m kdcli ARGS` on the store at `root`, stdout and stderr piped."""
    env = {**os.environ, "KDCLI_STORE": str(root), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdcli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_as_in_a_terminal)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    """Exit `code`; the last stderr line is the only 'error:' line and holds every fragment; no traceback."""
    stderr = result.stderr
    assert result.exit_code == code, stderr
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error:") for line in lines) == 1, stderr
    assert "Traceback" not in stderr and (result.exception is None or isinstance(result.exception, SystemExit))
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def put_model_artifact(store: Store, name: str, input_shape, num_outputs: int, state=None) -> str:
    """A model artifact made by hand: a registry model for another input shape or class count."""
    spec = {"name": "digits-teacher", "args": {}, "input_shape": list(input_shape), "num_outputs": num_outputs}
    if state is None:
        state = build_model("digits-teacher", tuple(input_shape), num_outputs).state_dict()
    artifact = store.put("model", state, {"stage": "test", "model": spec, "parents": {}})
    store.set_ref(name, artifact.id)
    return artifact.id


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A store holding a 1-epoch (small) digits teacher 't' and its logits table 'tl', built once per module."""
    from kdcli.cli import app

    root = tmp_path_factory.mktemp("template") / "store"
    runner = CliRunner()
    for args in (["train-teacher", "--model", "digits-student", "--epochs", "1", "--name", "t"], ["cache-logits", "t", "--name", "tl"]):
        result = runner.invoke(app, [*args, *CPU, "--store", str(root), "-q"], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
    return root


@pytest.fixture
def trained(template, store) -> Store:
    """A private copy of the template store, which is also KDCLI_STORE for `cli`."""
    shutil.copytree(template, store.root)
    return store


# ---- 1. crash and resume -----------------------------------------------------------------------

# dropout + BatchNorm (torch RNG, buffers), view augmentation (batch generator), cosine schedule,
# early-stopping state: everything a resume has to restore
RESUME_ARGS = ["baseline", "--epochs", "6", "--batch-size", "32", "--seed", "3", "--patience", "3",
               "--model-arg", "dropout=0.3", "--model-arg", "batchnorm=true", "--augment", "translate:1",
               "--scheduler", "cosine", *CPU]


def test_sigkill_then_ctrl_c_then_resume_is_bit_identical(tmp_path):
    reference = spawn(RESUME_ARGS, tmp_path / "reference")  # uninterrupted, alongside the crashing one
    root = tmp_path / "store"
    checkpoints = root / "checkpoints"

    first = spawn(RESUME_ARGS, root)
    deadline = time.monotonic() + 180
    while not list(checkpoints.glob("*.pt")):
        assert first.poll() is None, "the run ended before its first checkpoint: " + first.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    finish(first)
    assert first.returncode == -signal.SIGKILL
    assert Store(root).ids() == [] and list(checkpoints.glob("*.pt"))

    # second attempt: resumes, then Ctrl-C right after it reports one more epoch (possibly while that
    # epoch's checkpoint is being written: then the previous one must survive intact)
    second = spawn(RESUME_ARGS, root)
    seen = []
    for line in second.stderr:
        seen.append(line)
        if line.startswith("epoch"):
            second.send_signal(signal.SIGINT)
            break
    _, rest = finish(second)
    stderr = "".join(seen) + rest
    assert "resuming from the checkpoint after epoch" in stderr, stderr
    assert second.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted") and "Traceback" not in stderr
    assert Store(root).ids() == [] and list(checkpoints.glob("*.pt"))

    third = spawn(RESUME_ARGS, root)
    out, stderr = finish(third)
    assert third.returncode == 0, stderr
    assert re.search(r"resuming from the checkpoint after epoch [1-5]\n", stderr), stderr
    assert list(checkpoints.iterdir()) == []  # removed on success, no temp files left by the kills

    ref_out, ref_err = finish(reference)
    assert reference.returncode == 0, ref_err
    expected = Store(tmp_path / "reference").get(ref_out.split()[-1])
    got = Store(root).get(out.split()[-1])
    assert expected.tensors().keys() == got.tensors().keys()
    for key, value in expected.tensors().items():
        assert torch.equal(value, got.tensors()[key]), key
    assert without_timings(got.manifest["history"]) == without_timings(expected.manifest["history"])
    assert got.manifest["metrics"]["test_acc"] == expected.manifest["metrics"]["test_acc"]


class ScriptedValidation(torch.nn.Module):
    """Cross-entropy in training; in validation a scripted loss per epoch (so early stopping is certain)."""

    def __init__(self, val_losses: dict[int, float]):
        super().__init__()
        self.val_losses = val_losses
        self.epoch = 0

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        self.epoch = epoch
        return {}

    def forward(self, model, batch, train):
        outputs = model(batch.x)
        ce = F.cross_entropy(outputs, batch.y)
        loss = ce if train else ce * 0 + self.val_losses[self.epoch]
        return outputs, {"loss": loss}


def test_resume_after_early_stopping_does_not_train_on(tmp_path):
    """Killed after the checkpoint of the epoch that stopped early: the resumed run stops too."""
    from kdcli import engine
    from kdcli.augment import ViewSet
    from kdcli.config import build
    from kdcli.reporting import Reporter
    from kdcli.stages.common import load_data
    from kdcli.stages.configs import BaselineConfig

    cfg = build(BaselineConfig, None, {"epochs": 6, "patience": 1, "seed": 0})
    data = load_data(cfg)
    val_losses = {1: 1.0, 2: 0.8, 3: 0.9, 4: 0.5, 5: 0.4, 6: 0.3}  # stops after epoch 3

    def run(checkpoint):
        torch.manual_seed(0)
        model = build_model("digits-student", data.input_shape, 10)
        result = engine.fit(model, engine.DeviceData(data, torch.device("cpu")), ScriptedValidation(val_losses),
                            cfg, ViewSet(), Reporter(quiet=True), checkpoint)
        return model, result

    model, expected = run(engine.Checkpoint(tmp_path / "a.pt"))
    assert expected.stopped_early and len(expected.history) == 3 and expected.best_epoch == 2

    class KilledAfterSave(engine.Checkpoint):
        def save(self, state):
            super().save(state)
            if state["epoch"] == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(KilledAfterSave(tmp_path / "b.pt"))
    resumed_model, resumed = run(engine.Checkpoint(tmp_path / "b.pt"))
    assert resumed.resumed_from == 3 and resumed.stopped_early
    assert (len(resumed.history), resumed.best_epoch) == (3, 2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


# ---- 2. concurrency ----------------------------------------------------------------------------

def test_parallel_processes_share_one_store(tmp_path):
    root = tmp_path / "store"
    same = ["baseline", "--epochs", "1", "--seed", "1", "--name", "shared", *CPU]
    other = ["train-teacher", "--model", "digits-student", "--epochs", "1", *CPU]  # another stage
    procs = [spawn(same, root), spawn(same, root), spawn(other, root)]
    results = [(*finish(p), p.returncode) for p in procs]
    assert [code for _, _, code in results] == [0, 0, 0], [err for _, err, _ in results]
    ids = [out.split()[-1] for out, _, _ in results]
    assert ids[0] == ids[1] != ids[2]
    # the same stage key ran once: the other process waited on its lock and then hit the cache
    trained_here = ["baseline: digits-student" in err for _, err, _ in results[:2]]
    skipped = [f"skipped baseline: same config and inputs as {ids[0][:12]}" in err for _, err, _ in results[:2]]
    assert sorted(trained_here) == [False, True] and skipped == [not t for t in trained_here]

    store = Store(root)
    assert store.verify() == [] and set(store.ids()) == {ids[0], ids[2]}
    assert sorted(entry["artifact"] for entry in store.runs()) == sorted([ids[0], ids[2]])
    assert store.refs() == {"shared": ids[0]}
    assert list((root / "tmp").iterdir()) == [] and list((root / "checkpoints").iterdir()) == []


def test_ref_writes_are_atomic_under_concurrent_writers(store):
    a = store.put("model", {"w": torch.zeros(2)}, {"stage": "test"}).id
    b = store.put("model", {"w": torch.ones(2)}, {"stage": "test"}).id
    store.set_ref("runs/latest", a)
    ref_file = store.root / "refs" / "runs" / "latest"
    valid = {a + "\n", b + "\n"}
    torn: list[str] = []
    done = threading.Event()

    def writer(offset: int):
        for k in range(150):
            store.set_ref("runs/latest", (a, b)[(k + offset) % 2])

    def reader():
        while not done.is_set():
            text = ref_file.read_text()
            if text not in valid:
                torn.append(text)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()
    assert torn == []
    assert store.resolve("runs/latest") in (a, b)
    assert list((store.root / "tmp").iterdir()) == []


# ---- 3. integrity ------------------------------------------------------------------------------

def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_flip_byte, _truncate], ids=["flipped-byte", "truncated"])
def test_damaged_logits_stop_distill_and_verify_names_them(trained, cli, damage):
    table = trained.resolve("tl")
    damage(trained.object_path(table))
    before = (trained.ids(), trained.runs())

    result = cli("distill", "--logits", "tl", "--epochs", "1", *CPU)
    assert_one_line_error(result, 1, f"artifact {table[:12]} is corrupt")
    assert (trained.ids(), trained.runs()) == before  # nothing downstream was produced
    assert not list((trained.root / "checkpoints").glob("*"))

    result = cli("artifacts", "verify")
    assert result.exit_code == 1
    assert f"corrupt: {table}" in result.stderr and "1 corrupt object(s)" in result.stderr


def test_damaged_teacher_is_refused_by_every_reader(trained, cli):
    teacher = trained.resolve("t")
    _flip_byte(trained.object_path(teacher))
    before = (trained.ids(), trained.runs())
    for args in (["cache-logits", "t", "--force"], ["distill", "--teacher", "t", "--epochs", "1"],
                 ["artifacts", "show", "t"]):
        assert_one_line_error(cli(*args, *(CPU if args[0] != "artifacts" else [])), 1,
                              f"artifact {teacher[:12]} is corrupt")
    assert (trained.ids(), trained.runs()) == before


# ---- 4. bad inputs -----------------------------------------------------------------------------

@pytest.fixture
def bad_input_store(trained, tmp_path) -> dict[str, str]:
    """Artifacts and files that do not fit: placeholders of the bad-input cases."""
    put_model_artifact(trained, "rgb-teacher", (3, 8, 8), 10)
    put_model_artifact(trained, "five-class-teacher", (1, 8, 8), 5)
    put_model_artifact(trained, "bad-weights", (1, 8, 8), 10, state={"w": torch.zeros(3)})
    (trained.root / "refs" / "dangling").write_text("ab" * 32 + "\n")
    csv = tmp_path / "table.csv"
    csv.write_text("a,b,y\n" + "".join(f"{i},{i * i % 7},{2 * i}\n" for i in range(40)))
    (tmp_path / "empty").mkdir()
    configs = {"list": "- epochs\n- 3\n", "syntax": "epochs: [1, 2\n", "lr": "lr: fast\n",
               "bool": "download: maybe\n", "milestones": "milestones: {a: 1}\n", "nested": "model: {x: 1}\n"}
    for name, text in configs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return {"csv": str(csv), "empty": str(tmp_path / "empty"), "tmp": str(tmp_path)}


BAD_INPUTS = [
    # unknown names, with the closest valid ones suggested
    (["distill", "--method", "kdd", "--logits", "tl"], 2, "unknown method 'kdd'; did you mean kd"),
    (["baseline", "--loss", "cee"], 2, "unknown loss 'cee'; did you mean ce"),
    (["distill", "--logits", "tll"], 2, "unknown artifact 'tll'", "did you mean tl"),
    # out-of-range numbers the pipeline test does not cover
    (["distill", "--temperature", "-1", "--logits", "tl"], 2, "--temperature must be > 0"),
    (["distill", "--alpha", "-0.1", "--logits", "tl"], 2, "--alpha must be in [0, 1]"),
    (["train-teacher", "--epochs", "-2"], 2, "--epochs must be >= 1"),
    # teachers that do not fit the data
    (["distill", "--teacher", "t", "--dataset", "synthetic-regression"], 2,
     "takes inputs (1, 8, 8) with 10 outputs, but synthetic-regression has inputs (10,) with 1"),
    (["distill", "--teacher", "rgb-teacher"], 2, "takes inputs (3, 8, 8)", "digits has inputs (1, 8, 8)"),
    (["distill", "--teacher", "five-class-teacher"], 2, "with 5 outputs", "with 10"),
    (["cache-logits", "five-class-teacher"], 2, "with 5 outputs"),
    (["cache-logits", "t", "--dataset", "synthetic-regression"], 2, "cache-logits is for classification"),
    (["distill", "--teacher", "bad-weights"], 1, "does not fit digits-teacher"),
    # a logits table from other data, a model where a table is expected, refs that lead nowhere
    (["distill", "--logits", "tl", "--split-seed", "1"], 2, "was computed on data", "rerun cache-logits"),
    (["distill", "--logits", "t"], 2, "'t' is a model artifact, expected a logits"),
    (["distill", "--teacher", "dangling"], 1, "name 'dangling' points to abababababab, which is missing"),
    # data that is not there
    (["baseline", "--dataset", "cifar10", "--data-dir", "{empty}"], 2, "cifar10 not found under", "--download"),
    (["baseline", "--dataset", "csv:{csv}", "--target", "nope"], 2, "has no column 'nope'; columns: a, b, y"),
    (["baseline", "--dataset", "csv:{csv}"], 2, "needs the name of its target column"),
    # YAML configs: not a mapping, broken syntax, missing file, wrong types
    (["baseline", "--config", "{tmp}/list.yaml"], 2, "must hold a mapping"),
    (["baseline", "--config", "{tmp}/syntax.yaml"], 2, "is not valid YAML"),
    (["baseline", "--config", "{tmp}/missing.yaml"], 2, "config file not found"),
    (["baseline", "--config", "{tmp}/lr.yaml"], 2, "config key 'lr' expects a number, got 'fast'"),
    (["baseline", "--config", "{tmp}/bool.yaml"], 2, "config key 'download' expects true/false"),
    (["baseline", "--config", "{tmp}/milestones.yaml"], 2, "config key 'milestones' expects a list"),
    (["baseline", "--config", "{tmp}/nested.yaml"], 2, "config key 'model' expects a string"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[" ".join(case[0]) for case in BAD_INPUTS])
def test_bad_input_is_one_line(case, bad_input_store, trained, cli):
    args, code, *fragments = case
    before = trained.ids()
    assert_one_line_error(cli(*[a.format(**bad_input_store) for a in args], *CPU), code, *fragments)
    assert trained.ids() == before and not list((trained.root / "checkpoints").glob("*"))


def test_ambiguous_prefix_is_one_line(trained, cli):
    teacher = trained.resolve("t")
    twin = teacher[:8] + ("0" if teacher[8] != "0" else "1") + teacher[9:]  # forged: shares 8 hex chars
    shutil.copy(trained.object_path(teacher), trained.object_path(twin))
    for args in (["artifacts", "show", teacher[:8]], ["distill", "--teacher", teacher[:8], *CPU]):
        assert_one_line_error(cli(*args), 2, f"ambiguous artifact prefix '{teacher[:8]}'", teacher[:12], twin[:12])


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(cli, store, monkeypatch):
    """A loss term turning NaN in epoch 2: stop, name the epoch and the term, keep epoch 1's checkpoint."""
    from dataclasses import dataclass
    from typing import ClassVar

    from kdcli import engine
    from kdcli.losses import LOSSES
    from kdcli.losses.registry import LogitLoss

    poisoned = {"on": False}

    @dataclass
    class Fragile(LogitLoss):
        needs_teacher: ClassVar[bool] = False

        def terms(self, student_logits, teacher_logits, labels):
            ce = F.cross_entropy(student_logits, labels)
            penalty = ce * float("nan") if poisoned["on"] else ce * 0
            return {"ce": ce, "penalty": penalty, "loss": ce + penalty}

    monkeypatch.setitem(LOSSES._items, "fragile", Fragile)
    save = engine.Checkpoint.save

    def save_then_poison(self, state):
        save(self, state)
        poisoned["on"] = True

    monkeypatch.setattr(engine.Checkpoint, "save", save_then_poison)
    result = cli("baseline", "--loss", "fragile", "--epochs", "3", *CPU)
    assert_one_line_error(result, 1, "non-finite loss in epoch 2", "penalty", "checkpoint after epoch 1 is kept")
    (path,) = (store.root / "checkpoints").glob("*")
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert store.ids() == []

    # a learning rate that blows up in the very first epoch: there is no checkpoint to keep
    monkeypatch.setattr(engine.Checkpoint, "save", save)
    result = cli("baseline", "--lr", "1e30", "--epochs", "2", *CPU)
    assert_one_line_error(result, 1, "non-finite loss in epoch 1", "no checkpoint was written")
    assert store.ids() == []


def _no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_full_disk_while_storing_the_artifact(cli, store, monkeypatch):
    import kdcli.store as store_module

    def partial_then_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        _no_space()

    monkeypatch.setattr(store_module, "save_file", partial_then_full)
    result = cli("baseline", "--epochs", "1", *CPU)
    assert_one_line_error(result, 1, f"could not write artifact to {store.root}", "No space left on device")
    assert store.ids() == [] and store.runs() == []
    assert list((store.root / "tmp").iterdir()) == []


def test_full_disk_while_writing_a_checkpoint(cli, store, monkeypatch):
    def partial_then_full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        _no_space()

    monkeypatch.setattr(torch, "save", partial_then_full)
    result = cli("baseline", "--epochs", "2", *CPU)
    assert_one_line_error(result, 1, "could not write checkpoint", "No space left on device")
    assert store.ids() == [] and store.runs() == []
    assert list((store.root / "checkpoints").iterdir()) == []  # no partial checkpoint


def test_full_disk_while_naming_the_result(cli, store, monkeypatch):
    """The artifact is stored and cached; the name cannot be written: no partial ref, a clear line."""
    replace = os.replace

    def refs_full(src, dst, *args, **kwargs):
        if "refs" in Path(dst).parts:
            _no_space()
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refs_full)
    result = cli("baseline", "--epochs", "1", "--name", "mine", *CPU)
    assert_one_line_error(result, 1, "could not write", "No space left on device")
    assert store.refs() == {} and list((store.root / "tmp").iterdir()) == []
    assert store.verify() == [] and len(store.ids()) == 1


# ---- 5. untrusted files ------------------------------------------------------------------------

class _RunsCode:
    """Unpickling this runs code: it touches `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


def _evil_checkpoint(path: Path, marker: Path, **extra) -> Path:
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCode(marker), **extra}, path)
    return path


def test_pickled_code_in_checkpoints_is_never_run(tmp_path):
    from kdcli.engine import Checkpoint
    from kdcli.models.external import load_checkpoint_into

    marker = tmp_path / "pwned"
    path = _evil_checkpoint(tmp_path / "evil.pt", marker)
    checkpoint = Checkpoint(path)
    assert checkpoint.load() is None and "ignoring unreadable checkpoint" in checkpoint.problem
    with pytest.raises(UsageError, match="holds Python objects besides tensors"):
        load_checkpoint_into(build_model("digits-student", (1, 8, 8), 10), path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a plain unpickle does run it
    assert marker.exists()


def test_resume_ignores_a_planted_checkpoint(cli, store, tmp_path):
    """A pickle planted where the stage's checkpoint lives is not loaded: the run starts over."""
    args = ["baseline", "--epochs", "1", *CPU]
    first = json.loads(cli(*args, "--json").stdout)
    (entry,) = store.runs()
    marker = tmp_path / "pwned"
    _evil_checkpoint(store.root / "checkpoints" / f"{entry['key']}.pt", marker, epoch=1)
    result = cli(*args, "--force", "--json")
    assert result.exit_code == 0, result.stderr
    assert "ignoring unreadable checkpoint" in result.stderr and "resuming" not in result.stderr
    assert not marker.exists()
    second = store.get(json.loads(result.stdout)["id"])
    for key, value in store.get(first["id"]).tensors().items():  # same result as the clean run
        assert torch.equal(value, second.tensors()[key])


def test_import_teacher_refuses_code(cli, store, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "teacher.pt", marker)
    assert_one_line_error(cli("import-teacher", evil, "--model", "digits-teacher", *CPU), 2, "holds Python objects besides tensors")

    def no_hub(*args, **kwargs):
        raise AssertionError("torch.hub.load must not run without --trust-remote-code")

    monkeypatch.setattr(torch.hub, "load", no_hub)
    assert_one_line_error(cli("import-teacher", "torchhub:someone/repo:resnet", "--model", "digits-teacher", *CPU),
                          2, "--trust-remote-code")
    assert not marker.exists() and store.ids() == []


def test_hf_remote_code_needs_trust(tmp_path):
    """A local Hugging Face model whose config points at custom code: not executed without trust."""
    pytest.importorskip("transformers")
    from kdcli.models.external import load_hf_classifier

    marker = tmp_path / "pwned"
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "kdcli-custom", "num_labels": 10,
        "auto_map": {"AutoConfig": "custom_code.CustomConfig",
                     "AutoModelForImageClassification": "custom_code.CustomModel"}}))
    (folder / "custom_code.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'kdcli-custom'\n")
    with pytest.raises(UsageError, match="cannot load Hugging Face image classifier") as info:
        load_hf_classifier(str(folder), trust_remote_code=False)
    assert "--trust-remote-code" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_a_run_waiting_on_an_identical_running_stage_says_so(cli, store):
    args = {"epochs": 1, "seed": 7}
    key = STAGES.get("baseline").cache_key(build(BaselineConfig, None, args), store)
    holder = subprocess.Popen(  # another process runs "the same stage" for two seconds
        [sys.executable, "-c", "import sys, time; from kdcli.store import Store\n"
         "with Store(sys.argv[1]).lock('stage-' + sys.argv[2]):\n    print('held', flush=True); time.sleep(2)",
         str(store.root), key], cwd=REPO, text=True, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli("baseline", "--epochs", "1", "--seed", "7", *CPU)
    finally:
        holder.wait(timeout=30)
    assert result.exit_code == 0, result.stderr
    assert f"waiting for a running identical stage (pid {holder.pid})" in result.stderr
