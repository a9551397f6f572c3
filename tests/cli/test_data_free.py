"""kdcli synthesize and distilling on its output (issue 25): the data artifact and its manifest, the
cache and the resume, the refusals (no batch norm for the BN term, a teacher of another input shape),
the real test split, and the image grid."""

from __future__ import annotations

import json

import pytest
import torch

from kdcli.reporting import Reporter
from kdcli.stages import synthesize as synthesize_module
from kdcli.stages.common import RunContext
from kdcli.stages.configs import SynthesizeConfig
from kdcli.stages.registry import STAGES
from kdcli.store import Store

TINY = ["--n", "24", "--batch-size", "12", "--iterations", "2", "--jitter", "1", "--no-flip"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, make_cli, make_image_folder):
    """A digits teacher with batch norm, one without, and a teacher of 3 x 8 x 8 images; one store."""
    tmp = tmp_path_factory.mktemp("data-free")
    cli = make_cli(tmp / "store")
    folder = make_image_folder(tmp / "images", per_class=4, size=8)
    for args in (["--name", "t"], ["--model", "digits-student", "--name", "plain"],
                 ["--dataset", f"imagefolder:{folder}", "--image-size", "8", "--model", "digits-student",
                  "--name", "rgb"]):
        assert cli("train-teacher", "--epochs", "1", "-q", *args).exit_code == 0
    result = cli("synthesize", "t", *TINY, "--name", "syn")
    assert result.exit_code == 0, result.stderr
    return cli, Store(tmp / "store"), result


def test_synthesize_stores_inputs_with_the_teacher_as_parent(teachers):
    cli, store, result = teachers
    artifact = store.get("syn", kind="data")
    manifest = artifact.manifest
    assert manifest["stage"] == "synthesize" and manifest["parents"]["teacher"] == store.resolve("t")
    assert manifest["method"] == "deepinversion" and manifest["weights"] == {
        "ce_weight": 1.0, "bn_weight": 10.0, "tv_weight": 2.5e-5, "l2_weight": 3e-8}
    assert manifest["input_shape"] == [1, 8, 8] and manifest["normalization"]["scale"] == pytest.approx(1 / 16)
    assert manifest["real_images"] == 0 and manifest["seed"] == 0
    assert sorted(artifact.tensor_names()) == ["teacher_logits", "x_pool", "y_pool", "y_target"]
    x = artifact.tensor("x_pool")
    assert x.shape == (24, 1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 16
    assert "batch 1/2" in result.stderr and "batch 2/2" in result.stderr and "eta" in result.stderr
    again = cli("synthesize", "t", *TINY)
    assert again.exit_code == 0 and "skipped synthesize" in again.stderr
    assert again.stdout.strip() == artifact.id


def test_distill_on_synthetic_inputs_tests_on_the_real_test_split(teachers, tmp_path):
    cli, store, _ = teachers
    result = cli("distill", "--dataset", "synthetic:syn", "--teacher", "t", "--epochs", "1", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    run = store.get(json.loads(result.stdout)["id"])
    assert run.manifest["parents"]["synthetic"] == store.resolve("syn")  # lineage and gc see the inputs
    data = run.manifest["data"]
    assert data["evaluation"] == {"validation": "held-out synthetic inputs", "test": "real test split of digits"}
    assert data["test"] == 360 and data["train"] + data["val"] == 24
    plot = cli("plot", "synthetic", "syn", "--out", tmp_path / "grid.png", "-q")
    assert plot.exit_code == 0 and (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_a_teacher_without_batch_norm_is_refused_for_the_bn_term(teachers):
    cli, store, _ = teachers
    before = sorted(p.name for p in store.root.rglob("*"))
    result = cli("synthesize", "plain", *TINY)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "has no batch-norm layer" in result.stderr and "entropy-tv" in result.stderr
    assert sorted(p.name for p in store.root.rglob("*")) == before
    works = cli("synthesize", "plain", *TINY, "--method", "entropy-tv", "-q")
    assert works.exit_code == 0, works.stderr


def test_a_synthetic_set_for_a_teacher_of_another_input_shape_is_refused(teachers):
    cli, _, _ = teachers
    result = cli("distill", "--dataset", "synthetic:syn", "--teacher", "rgb", "--epochs", "1")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "takes inputs (3, 8, 8)" in result.stderr and "(1, 8, 8)" in result.stderr


def test_an_interrupted_synthesis_resumes_at_the_next_batch_with_the_same_inputs(teachers, tmp_path, monkeypatch):
    _, store, _ = teachers
    cfg = SynthesizeConfig(teacher="t", n=24, batch_size=12, iterations=2, jitter=1, flip=False, seed=3)
    stage = STAGES.get("synthesize")
    original, calls = synthesize_module.Inversion.batch, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(synthesize_module.Inversion, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage(cfg, RunContext(store=store, reporter=Reporter(quiet=True)))
    resumed_calls = []

    def counted(self, *args, **kwargs):
        resumed_calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(synthesize_module.Inversion, "batch", counted)
    resumed = stage(cfg, RunContext(store=store, reporter=Reporter(quiet=True)))
    assert len(resumed_calls) == 1  # the resumed run optimized only the second batch
    fresh = stage(cfg, RunContext(store=store, reporter=Reporter(quiet=True), force=True))
    assert len(resumed_calls) == 3 and not fresh.skipped
    assert torch.equal(resumed.artifact.tensor("x_pool"), fresh.artifact.tensor("x_pool"))


def test_without_the_teachers_data_the_test_is_a_held_out_synthetic_part(tmp_path):
    from kdcli.data import DataSpec, load_dataset

    store = Store(tmp_path / "store")
    tensors = {"x_pool": torch.rand(50, 1, 28, 28), "y_pool": torch.arange(50) % 10, "y_target": torch.arange(50) % 10,
               "teacher_logits": torch.zeros(50, 10)}
    manifest = {"stage": "synthesize", "num_outputs": 10, "class_names": [str(k) for k in range(10)],
                "normalization": {"scale": 1 / 255, "mean": [0.1307], "std": [0.3081]},
                "teacher_data": {"dataset": "mnist", "data_dir": str(tmp_path / "no-mnist-here")}, "parents": {}}
    store.set_ref("made", store.put("data", tensors, manifest).id)
    data = load_dataset(DataSpec(name="synthetic:made", store=store, val_fraction=0.25))
    assert data.evaluation["test"] == "held-out synthetic inputs (no real data)"
    assert (len(data.y_test), len(data.train_idx), len(data.val_idx)) == (10, 30, 10)


def test_adi_runs_with_a_student_and_records_it(teachers):
    cli, store, _ = teachers
    result = cli("synthesize", "t", *TINY, "--method", "adi", "--student", "plain", "--adi-weight", "0.5", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    manifest = store.get(json.loads(result.stdout)["id"]).manifest
    assert manifest["parents"] == {"teacher": store.resolve("t"), "student": store.resolve("plain")}
    assert manifest["weights"]["adi_weight"] == 0.5 and "final_competition" in manifest["metrics"]
    wrong = cli("synthesize", "t", *TINY, "--method", "adi", "--student", "rgb")
    assert wrong.exit_code == 2 and "student" in wrong.stderr and "(3, 8, 8)" in wrong.stderr


def test_a_teacher_whose_data_is_gone_is_still_inverted_and_distilled(tmp_path, make_cli, make_image_folder):
    """The data-free user: the teacher's manifest holds its input space, so neither synthesize nor
    distilling on its output needs the data set; the test is then a held-out synthetic part."""
    import shutil

    cli = make_cli(tmp_path / "store")
    folder = make_image_folder(tmp_path / "images", per_class=4, size=8)
    assert cli("train-teacher", "--dataset", f"imagefolder:{folder}", "--image-size", "8", "--model", "digits-teacher",
               "--epochs", "1", "--name", "t", "-q").exit_code == 0
    space = Store(tmp_path / "store").get("t").manifest["data"]["input_space"]
    assert space["scale"] == pytest.approx(1 / 255) and len(space["mean"]) == 3 and len(space["class_names"]) >= 2
    shutil.rmtree(folder)
    made = cli("synthesize", "t", *TINY, "--name", "syn")
    assert made.exit_code == 0, made.stderr
    assert Store(tmp_path / "store").get("syn").manifest["normalization"]["mean"] == space["mean"]
    result = cli("distill", "--dataset", "synthetic:syn", "--teacher", "t", "--model", "digits-student",
                 "--epochs", "1", "--json")
    assert result.exit_code == 0, result.stderr
    data = Store(tmp_path / "store").get(json.loads(result.stdout)["id"]).manifest["data"]
    assert data["evaluation"]["test"] == "held-out synthetic inputs (no real data)"
