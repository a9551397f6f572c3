"""Language models through every stage on a tiny corpus the test writes: teacher, top-k table,
baseline and distilled students (cached reruns, paired seeds), compare on bits per byte, export to a
Hugging Face directory that transformers loads, generate, visualize-temperature; and the text bad
inputs, each one line, exit 2, before any work, the store unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.store import Store

TINY = ["--model-arg", "n_layer=1", "--model-arg", "n_embd=16", "--model-arg", "n_head=2",
        "--model-arg", "n_positions=32"]
CPU = ["--device", "cpu"]


def write_corpus(path: Path, chars: int = 24_000) -> Path:
    """About `chars` characters of CPython's reference manual (every install carries it), cut at a line."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    path.write_text(text[:text.index("\n", chars) + 1], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm(tmp_path_factory, make_cli):
    """A store with a teacher, its top-k table, and two seeds of baseline and distilled students."""
    tmp = tmp_path_factory.mktemp("text")
    corpus = write_corpus(tmp / "notes.txt")
    data = ["--dataset", f"text:{corpus}", "--context", "16", *CPU]
    cli = make_cli(tmp / "store")
    runs = {}

    def run(key, *args):
        result = cli(*args, *data)
        assert result.exit_code == 0, (args, result.stderr)
        runs[key] = result
        return result

    run("teacher", "train-teacher", "--model", "hf-causal:gpt2", *TINY, "--model-arg", "n_embd=32", "--epochs", "3",
        "--name", "teacher")
    run("table", "cache-logits", "teacher", "--table", "topk:8", "--name", "table")
    for seed in (0, 1):
        run(f"baseline-{seed}", "baseline", "--model", "hf-causal:gpt2", *TINY, "--epochs", "2", "--seed", seed,
            "--name", f"base-s{seed}")
        run(f"kd-{seed}", "distill", "--logits", "table", "--model", "hf-causal:gpt2", *TINY, "--epochs", "2",
            "--seed", seed, "--temperature", "1", "--alpha", "0.5", "--name", f"kd-s{seed}")
    return {"tmp": tmp, "corpus": corpus, "data": data, "cli": cli, "store": Store(tmp / "store"), "runs": runs}


def test_every_stage_records_language_model_metrics(lm):
    store = lm["store"]
    teacher = store.get("teacher")
    metrics = teacher.manifest["metrics"]
    for key in ("test_loss", "test_ppl", "test_acc", "test_bpb", "val_bpb", "val_nll"):
        assert math.isfinite(metrics[key]), key
    data = teacher.manifest["data"]
    assert data["context"] == 16 and data["tokenizer"]["spec"] == "bytes" and data["num_outputs"] == 256
    # bytes: one token is one byte, so bits per byte is the loss in bits
    assert metrics["test_bpb"] == pytest.approx(metrics["test_loss"] / math.log(2), rel=1e-6)
    assert metrics["test_ppl"] == pytest.approx(math.exp(metrics["test_loss"]), rel=1e-6)
    table = store.get("table")
    assert table.manifest["table"] == "topk:8"
    assert table.manifest["bytes_per_token"] == 8 * 3 + 2  # fp16 log-prob + uint8 id per entry, fp16 tail
    assert table.manifest["full_share"] == pytest.approx(26 / 512)
    assert table.tensor("topk_ids").dtype == torch.uint8 and table.tensor("topk_logprobs").dtype == torch.float16
    kd = store.get("kd-s0")
    assert kd.manifest["parents"]["logits"] == table.id and 0 <= kd.manifest["metrics"]["teacher_agreement"] <= 100


def test_the_table_completes_the_teachers_distribution(lm):
    """Each position's K log-probs and tail mass sum to one; the K are the teacher's largest."""
    table = lm["store"].get("table")
    top = table.tensor("topk_logprobs")[:50].float()
    total = top.exp().sum(-1) + table.tensor("tail")[:50].float()
    assert torch.allclose(total, torch.ones_like(total), atol=2e-2)
    assert bool((top[..., :-1] >= top[..., 1:]).all())


def test_same_seed_same_initial_weights_and_a_rerun_skips_every_stage(lm):
    store, cli, data = lm["store"], lm["cli"], lm["data"]
    for seed in (0, 1):
        assert (store.get(f"base-s{seed}").manifest["initial_weights_sha256"]
                == store.get(f"kd-s{seed}").manifest["initial_weights_sha256"])
    again = cli("distill", "--logits", "table", "--model", "hf-causal:gpt2", *TINY, "--epochs", "2", "--seed", "0",
                "--temperature", "1", "--alpha", "0.5", *data)
    assert again.exit_code == 0 and "skipped distill" in again.stderr
    assert again.stdout.split()[-1] == store.get("kd-s0").id
    table = cli("cache-logits", "teacher", "--table", "topk:8", *data)
    assert "skipped cache-logits" in table.stderr


def test_compare_tests_bits_per_byte_lower_is_better(lm):
    result = lm["cli"]("compare", "base-s0,base-s1", "kd-s0,kd-s1", "--label", "baseline", "--label", "distilled",
                       "--reference", "teacher", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metric"] == "test_bpb" and report["higher_is_better"] is False


def test_a_sweep_chooses_on_validation_bits_per_byte(lm):
    result = lm["cli"]("sweep", "distill", "--logits", "table", "--model", "hf-causal:gpt2", *TINY, "--epochs", "1",
                       "--alpha", "0.5", "--grid", "temperature=1,2", "--seeds", "0-1", *lm["data"], "--json")
    assert result.exit_code == 0, result.stderr
    sweep = json.loads(result.stdout)
    assert sweep["select"] == "val_bpb" and sweep["select_higher_is_better"] is False
    assert sweep["metric"] == "test_bpb" and sweep["best"] in ("temperature=1", "temperature=2")


def test_an_online_teacher_distills_the_same_student(lm):
    store, cli, data = lm["store"], lm["cli"], lm["data"]
    result = cli("distill", "--teacher", "teacher", "--model", "hf-causal:gpt2", *TINY, "--epochs", "1",
                 "--temperature", "1", *data)
    assert result.exit_code == 0, result.stderr
    run = store.get(result.stdout.split()[-1])
    assert run.manifest["parents"]["teacher"] == store.get("teacher").id
    assert run.manifest["initial_weights_sha256"] == store.get("kd-s0").manifest["initial_weights_sha256"]


def test_export_hf_loads_in_transformers_with_the_manifests_bits_per_byte(lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = lm["tmp"] / "hf"
    result = lm["cli"]("export", "kd-s0", "--format", "hf", "--out", out)
    assert result.exit_code == 0, result.stderr
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tokenizer("def", add_special_tokens=False)["input_ids"] == list(b"def")
    assert model.config.vocab_size == 256
    summary = json.loads((out / "export.json").read_text())[0]
    assert summary["metrics"]["parity_bpb_diff"] <= 1e-3
    assert summary["metrics"]["test_bpb"] == pytest.approx(lm["store"].get("kd-s0").manifest["metrics"]["test_bpb"],
                                                           abs=1e-4)
    assert lm["cli"]("export", "kd-s0", "--format", "onnx", "--out", lm["tmp"] / "onnx").exit_code == 2


def test_import_teacher_takes_a_saved_causal_lm_offline(lm):
    """A tiny random GPT-2 saved by the test imports as a teacher, distills a student, and a model of
    another vocabulary is refused in one line."""
    from transformers import GPT2Config, GPT2LMHeadModel

    for vocab in (256, 100):
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=1, n_embd=16, n_head=2, n_positions=32)).save_pretrained(
            lm["tmp"] / f"gpt2-{vocab}")
    cli, data = lm["cli"], lm["data"]
    imported = cli("import-teacher", f"hf:{lm['tmp'] / 'gpt2-256'}", *data, "--name", "imported")
    assert imported.exit_code == 0, imported.stderr
    manifest = lm["store"].get("imported").manifest
    assert manifest["model"]["name"] == "hf-causal:gpt2" and math.isfinite(manifest["metrics"]["test_bpb"])
    student = cli("distill", "--teacher", "imported", "--model", "hf-causal:gpt2", *TINY, "--epochs", "1", *data)
    assert student.exit_code == 0, student.stderr
    other = cli("import-teacher", f"hf:{lm['tmp'] / 'gpt2-100'}", *data)
    assert other.exit_code == 2 and "has a vocabulary of 100 tokens but the tokenizer bytes has 256" in other.stderr


def test_generate_is_seeded_and_visualize_shows_the_next_token(lm):
    cli = lm["cli"]
    first = cli("generate", "kd-s0", "--prompt", "The ", "--max-new-tokens", "20", "--seed", "1")
    second = cli("generate", "kd-s0", "--prompt", "The ", "--max-new-tokens", "20", "--seed", "1")
    other = cli("generate", "kd-s0", "--prompt", "The ", "--max-new-tokens", "20", "--seed", "2", "--json")
    assert first.exit_code == 0 and first.stdout == second.stdout and first.stdout.startswith("The ")
    assert len(json.loads(other.stdout)["ids"]) == 20
    view = cli("visualize-temperature", "teacher", "--prompt", "The ", "--temperatures", "1,4",
               "--out", lm["tmp"] / "figures", "--json")
    assert view.exit_code == 0, view.stderr
    sample = json.loads(view.stdout)["samples"][0]
    assert sample["entropy"][0] < sample["entropy"][1] and Path(sample["figure"]).is_file()


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def bad_files(lm) -> dict[str, str]:
    tmp = lm["tmp"] / "bad"
    tmp.mkdir()
    (tmp / "empty.txt").write_text("")
    (tmp / "binary.bin").write_bytes(bytes(range(256)) * 4)
    return {"corpus": str(lm["corpus"]), "empty": str(tmp / "empty.txt"), "binary": str(tmp / "binary.bin")}


TEXT = ["--dataset", "text:{corpus}", "--context", "16", *CPU]
BAD = [
    (["baseline", "--model", "lm-student", "--dataset", "text:{empty}", *CPU], "the corpus is empty"),
    (["baseline", "--model", "lm-student", "--dataset", "text:{binary}", *CPU], "UTF-8"),
    (["baseline", "--dataset", "text:{corpus}", *CPU], "--model digits-student does not take token windows"),
    (["baseline", "--model", "lm-student", "--dataset", "text:{corpus}", "--context", "300", *CPU],
     "--context 300 is longer than hf-causal:gpt2's 256 positions"),
    (["cache-logits", "teacher", "--table", "topk:300", *TEXT], "K must be between 1 and 255"),
    (["cache-logits", "teacher", "--table", "sparse", *TEXT], "use topk:K"),
    (["distill", "--logits", "table", "--model", "lm-student", "--tokenizer", "bpe:300", "--dataset", "text:{corpus}",
      "--context", "16", *CPU], "need one tokenizer and context"),
    (["distill", "--logits", "table", "--model", "lm-student", "--dataset", "text:{corpus}", "--context", "8", *CPU],
     "--context 16, but this run uses --tokenizer bytes --context 8"),
    (["distill", "--teacher", "teacher", "--model", "lm-student", "--dataset", "digits", *CPU], None),
    (["baseline", "--model", "lm-student", "--augment", "flip", *TEXT], "--augment flip: views and mixing are for"),
    (["distill", "--teacher", "teacher", "--method", "fitnet", "--model", "lm-student", *TEXT],
     "--method fitnet distills image features"),
    (["distill", "--teacher", "teacher", "--scheme", "dml", "--model", "lm-student", *TEXT], "--scheme"),
    (["cache-logits", "teacher", "--topk", "4", *TEXT], "--topk and --views are for images"),
    (["cache-logits", "kept-image", "--table", "topk:4", "--dataset", "digits", *CPU], "--table is for text corpora"),
    (["generate", "kept-image", "--prompt", "x"], "is not a language model"),
    (["baseline", "--context", "16", *CPU], "--context applies to text, python-docs and seqkd only"),
    (["baseline", "--model", "lm-student", "--split-seed", "3", *TEXT], "--split-seed and --val-fraction do not apply"),
]


@pytest.mark.parametrize("case", BAD, ids=[" ".join(args[:3]) for args, _ in BAD])
def test_text_bad_input_is_one_line_exit_2_before_any_work(case, lm, bad_files):
    args, fragment = case
    store = lm["store"]
    if "kept-image" not in store.refs():
        image = store.put("model", {"w": torch.zeros(1)}, {"stage": "baseline", "metrics": {},
                                                          "model": {"name": "digits-student", "args": {},
                                                                    "input_shape": [1, 8, 8], "num_outputs": 10}})
        store.set_ref("kept-image", image.id)
    before = _tree(store.root)
    result = CliRunner().invoke(app, [a.format(**bad_files) for a in args] + ["--store", str(store.root)],
                                catch_exceptions=False)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert fragment is None or fragment in result.stderr, result.stderr
    assert _tree(store.root) == before
