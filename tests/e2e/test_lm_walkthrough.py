"""The README's language-model walkthrough, run line by line as written: a folder corpus this test
writes (CPython's reference manual, which every install carries), a trained BPE tokenizer shared by
teacher and students, a top-k table, baseline and distilled students, compare on bits per byte, the
student exported to a Hugging Face directory that transformers loads, and a seeded sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_walkthrough import walkthrough_commands


def write_notes(root: Path, files: int = 4, chars: int = 12_000) -> None:
    """`files` files of about `chars` characters each, cut at a line, from pydoc_data.topics."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    root.mkdir()
    start = 0
    for number in range(files):
        end = text.index("\n", start + chars) + 1
        (root / f"notes{number}.txt").write_text(text[start:end], encoding="utf-8")
        start = end


@pytest.mark.slow
def test_readme_lm_walkthrough_runs_end_to_end(cli, store, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    write_notes(tmp_path / "notes")
    commands = walkthrough_commands("lm-walkthrough")
    assert [c[0] for c in commands][:3] == ["train-teacher", "cache-logits", "baseline"]
    outputs = {}
    for args in commands:
        result = cli(*args)
        assert result.exit_code == 0, (args, result.stderr)
        outputs[args[0]] = result
    teacher = store.get("lm/teacher").manifest
    assert teacher["data"]["tokenizer"]["kind"] == "bpe" and teacher["data"]["num_outputs"] == 320
    assert store.get("lm/kd-s0").manifest["data"]["tokenizer"] == teacher["data"]["tokenizer"]
    assert "test_bpb" in outputs["compare"].stderr or "test_bpb" in outputs["compare"].stdout
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lm-export", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lm-export", local_files_only=True)
    assert model.config.vocab_size == len(tokenizer) == 320
    metrics = json.loads((tmp_path / "lm-export" / "export.json").read_text())[0]["metrics"]
    assert metrics["parity_bpb_diff"] <= 1e-3
    assert outputs["generate"].stdout.startswith("The ")
