"""Issue 23 on a tiny corpus: sampled and tail-less top-k tables, reverse KL and JSD with an online
teacher, sequence-level KD through `sequence-kd` and `--dataset seqkd:REF`, ECE in every text model's
metrics; and the bad inputs, each one line, exit 2, before any work, the store unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from kdcli.store import Store

CPU = ["--device", "cpu"]
STUDENT = ["--model", "hf-causal:gpt2", "--model-arg", "n_layer=1", "--model-arg", "n_embd=16", "--model-arg",
           "n_head=2", "--model-arg", "n_positions=32", "--epochs", "1"]


def files_of(root) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def lm(tmp_path_factory, make_cli):
    tmp = tmp_path_factory.mktemp("tables")
    from pydoc_data.topics import topics

    corpus = tmp / "notes.txt"
    corpus.write_text("\n\n".join(topics[key] for key in sorted(topics))[:12_000], encoding="utf-8")
    data = ["--dataset", f"text:{corpus}", "--context", "16", *CPU]
    cli = make_cli(tmp / "store")

    def run(*args):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.stderr)
        return result

    run("train-teacher", *STUDENT, "--model-arg", "n_embd=32", "--name", "teacher", *data)
    return {"tmp": tmp, "data": data, "cli": cli, "run": run, "store": Store(tmp / "store")}


def test_every_table_records_its_size_and_the_students_it_trains_have_ece(lm):
    run, data, store = lm["run"], lm["data"], lm["store"]
    for spec, name, per_position in (("sample:8", "sampled", 8 * (1 + 1 + 2)),
                                     ("sample:8,0.5", "sampled-t", 8 * (1 + 1 + 2 + 2)),
                                     ("topk:4,notail", "notail", 4 * 3), ("full", "full", 512)):
        run("cache-logits", "teacher", "--table", spec, "--name", name, *data)
        table = store.get(name)
        assert table.manifest["bytes_per_token"] == per_position and table.manifest["table"] == spec
        assert table.manifest["full_share"] == pytest.approx(per_position / 512)
        run("distill", "--logits", name, *STUDENT, "--temperature", "1", "--name", f"kd-{name}", *data)
        metrics = store.get(f"kd-{name}").manifest["metrics"]
        assert 0 <= metrics["test_ece"] <= 1 and 0 <= metrics["val_ece"] <= 1, metrics
        assert math.isfinite(metrics["test_bpb"])
    counts = store.get("sampled").tensor("sample_counts").long()
    assert bool((counts.sum(-1) == 8).all())  # N draws per position, as distinct ids with counts
    history = store.get("kd-sampled").manifest["history"]
    assert 0 <= history[-1]["val_ece"] <= 1


@pytest.mark.parametrize("method", [["--method", "rkl"], ["--method", "jsd", "--jsd-beta", "0.3"]])
def test_reverse_kl_and_jsd_train_against_an_online_teacher_or_a_full_table(lm, method):
    run, data = lm["run"], lm["data"]
    run("distill", "--teacher", "teacher", *STUDENT, *method, *data)
    run("cache-logits", "teacher", "--table", "full", "--name", "full", *data)
    run("distill", "--logits", "full", *STUDENT, *method, *data)


def test_sequence_level_kd_trains_a_student_on_the_teachers_samples(lm):
    run, data, store = lm["run"], lm["data"], lm["store"]
    first = run("sequence-kd", "teacher", "--temperature", "0.8", "--seed", "3", "--name", "seq", *data)
    again = run("sequence-kd", "teacher", "--temperature", "0.8", "--seed", "3", "--force", *data)
    seq = store.get("seq")
    assert seq.kind == "data" and first.stdout.split()[-1] != "" and again.exit_code == 0
    assert torch.equal(store.get(again.stdout.split()[-1]).tensor("x_pool"), seq.tensor("x_pool"))  # seeded
    seqdata = ["--dataset", "seqkd:seq", "--context", "16", *CPU]
    run("baseline", *STUDENT, "--name", "seq-student", *seqdata)
    base = run("baseline", *STUDENT, "--name", "base", *data)
    student, plain = store.get("seq-student").manifest, store.get("base").manifest
    # trained on other windows, tested on the same corpus's test split
    assert student["data_fingerprint"] != plain["data_fingerprint"] and base.exit_code == 0
    assert student["data"]["split_bytes"]["test"] == plain["data"]["split_bytes"]["test"]
    run("cache-logits", "teacher", "--table", "topk:4", "--name", "seq-table", *seqdata)
    run("distill", "--logits", "seq-table", *STUDENT, "--temperature", "1", *seqdata)


BAD = [
    (["cache-logits", "teacher", "--table", "sample:0"], "N (draws per position) must be between 1"),
    (["cache-logits", "teacher", "--table", "topk:256,notail"], "K must be between 1 and 255"),
    (["cache-logits", "teacher", "--table", "topk:4,half"], "takes ,tail (the default) or ,notail"),
    (["distill", "--logits", "sampled", *STUDENT, "--method", "rkl"], "needs the teacher's full distribution"),
    (["distill", "--logits", "notail", *STUDENT, "--method", "jsd"], "needs the teacher's full distribution"),
    (["distill", "--logits", "sampled", *STUDENT, "--temperature", "2"], "--temperature 1"),
    (["distill", "--teacher", "teacher", *STUDENT, "--method", "jsd", "--jsd-beta", "1"], "--jsd-beta must be"),
    (["sequence-kd", "image"], "is not one"),
    (["sequence-kd", "teacher", "--dataset", "digits"], "not --dataset digits"),
]


@pytest.mark.parametrize("case", BAD, ids=[" ".join(args[:4]) for args, _ in BAD])
def test_bad_inputs_are_one_line_exit_2_before_any_work(case, lm):
    from typer.testing import CliRunner

    from kdcli.cli import app

    args, fragment = case
    store = lm["store"]
    if "image" not in store.refs():
        image = store.put("model", {"w": torch.zeros(1)}, {"stage": "baseline", "metrics": {},
                                                          "model": {"name": "digits-student", "args": {},
                                                                    "input_shape": [1, 8, 8], "num_outputs": 10}})
        store.set_ref("image", image.id)
    for name, spec in (("sampled", "sample:8"), ("notail", "topk:4,notail")):
        if name not in store.refs():
            lm["run"]("cache-logits", "teacher", "--table", spec, "--name", name, *lm["data"])
    data = [] if "--dataset" in args else lm["data"]
    before = files_of(store.root)
    result = CliRunner().invoke(app, [*args, *data, "--store", str(store.root)], catch_exceptions=False)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert fragment in result.stderr, result.stderr
    assert files_of(store.root) == before
