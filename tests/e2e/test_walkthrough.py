"""The README's walkthroughs, run line by line as written: an ImageFolder this test writes, a timm
teacher, a torchvision student, cache-logits, distill, compare, export to ONNX with parity, the card;
and a user's own 1-D CNN teacher and MLP student (the README's own file) on a .npz of sequences."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str, language: str) -> str:
    """The text of the first ```language block after the README's `<!-- MARKER -->` line."""
    text = README.read_text().split(f"<!-- {marker} -->", 1)[1]
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def walkthrough_commands(marker: str = "walkthrough") -> list[list[str]]:
    """The kdcli command lines of the sh block after the README's `<!-- MARKER -->` line."""
    block = readme_block(marker, "sh")
    commands = shlex.split(block.replace("\\\n", " "), comments=True)
    lines, current = [], []
    for token in commands:
        if token == "kdcli" and current:
            lines.append(current)
            current = []
        current.append(token)
    lines.append(current)
    assert all(line[0] == "kdcli" for line in lines)
    return [line[1:] for line in lines]


def write_shapes(root: Path, per_class: int = 16) -> None:
    """Three classes of 16x16 RGB images (a bar across, a bar down, a square) with noise and jitter."""
    rng = np.random.default_rng(0)
    for label in ("across", "down", "square"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            o = int(rng.integers(2, 8))
            if label == "across":
                image[o:o + 4, 2:14] = 230
            elif label == "down":
                image[2:14, o:o + 4] = 230
            else:
                image[o:o + 6, o:o + 6] = 230
            Image.fromarray(image).save(root / label / f"{i}.png")


@pytest.mark.slow
def test_readme_walkthrough_runs_end_to_end(cli, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_shapes(tmp_path / "shapes")
    commands = walkthrough_commands()
    assert [c[0] for c in commands][:3] == ["train-teacher", "cache-logits", "baseline"]
    outputs = {}
    for args in commands:
        result = cli(*args)
        assert result.exit_code == 0, (args, result.stderr)
        outputs[" ".join(args)] = result
    assert store.get("walk/teacher").manifest["model"]["name"] == "timm:test_resnet"
    assert store.get("walk/kd-s0").manifest["model"]["name"] == "torchvision:mobilenet_v3_small"
    assert sorted(p.name for p in (tmp_path / "walk-export").iterdir()) == ["export.json", "student.onnx",
                                                                            "teacher.onnx"]
    rows = json.loads((tmp_path / "walk-export" / "export.json").read_text())
    assert all(row["metrics"]["parity_agreement"] >= 99.9 for row in rows)
    card = (tmp_path / "walk-card.md").read_text()
    for heading in ("## Teacher", "## Data", "## Recipe", "## Over seeds", "## Exports", "## Lineage"):
        assert heading in card
    assert "timm:test_resnet" in card and "imagefolder:" in card
    assert next(r for k, r in outputs.items() if k.startswith("artifacts lineage")).stdout.startswith("graph TD")


def write_sequences(path: Path, n: int = 160, n_test: int = 60) -> None:
    """Three classes of 2-channel signals of length 32: a sine of the class's frequency, and noise."""
    rng = np.random.default_rng(0)

    def draw(count):
        y = rng.integers(0, 3, count)
        t = np.linspace(0, 1, 32)
        x = np.stack([np.sin(2 * np.pi * (y[:, None] + 1) * t), rng.standard_normal((count, 32))], 1)
        return (x + 1.5 * rng.standard_normal((count, 2, 32))).astype(np.float32), y

    (x, y), (x_test, y_test) = draw(n), draw(n_test)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)


@pytest.mark.slow
def test_readme_own_model_walkthrough_runs_end_to_end(cli, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text(readme_block("own-code models", "python"))
    write_sequences(tmp_path / "sequences.npz")
    commands = walkthrough_commands("own-code walkthrough")
    assert [c[0] for c in commands] == ["train-teacher", "cache-logits", "baseline", "baseline", "distill", "distill",
                                        "compare", "export"]
    for args in commands:
        result = cli(*args)
        assert result.exit_code == 0, (args, result.stderr)
    teacher = store.get("seq/teacher").manifest
    assert teacher["model"]["name"] == "py:mymodels.py:CNN1d" and teacher["data"]["input_shape"] == [2, 32]
    assert teacher["model"]["code"]["files"] == {"mymodels.py": (tmp_path / "mymodels.py").read_text()}
    assert teacher["data"]["normalization"]["kind"] == "per-feature"
    assert store.get("seq/kd-s0").manifest["model"]["name"] == "py:mymodels.py:mlp"
    rows = json.loads((tmp_path / "seq-export" / "export.json").read_text())
    assert len(rows) == 2 and all(row["metrics"]["parity_agreement"] >= 99.9 for row in rows)
    untrusted = cli(*commands[-1][:-1], "--force")
    assert untrusted.exit_code == 2 and "--trust-code" in untrusted.stderr
