"""artifacts lineage and card: the DAG and its commands come from the manifests, and running the
printed commands in a fresh store rebuilds the same artifact (same id, metrics and weights)."""

from __future__ import annotations

import hashlib
import shlex

import pytest

from kdcli.stages.lineage import command_line
from kdcli.store import Store


def _weights_hash(artifact) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(artifact.tensors().items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _measured(artifact) -> dict:
    """The metrics a rebuild must reproduce exactly (wall-clock latency aside)."""
    return {k: v for k, v in artifact.manifest["metrics"].items() if "latency" not in k}


def _rebuild_commands(lineage_text: str) -> list[str]:
    """The command lines under the tree's "rebuild, in order:"."""
    return [line.strip() for line in lineage_text.split("rebuild, in order:")[1].strip().splitlines()]


def _run_each(lines: list[str], cli) -> list[str]:
    """Run each printed `kdcli ...` line through `cli`; the artifact id each one prints last."""
    ids = []
    for line in lines:
        result = cli(*shlex.split(line)[1:], "-q")
        assert result.exit_code == 0, (line, result.stderr)
        ids.append(result.stdout.strip().splitlines()[-1])
    return ids


@pytest.fixture(scope="module")
def chain(tmp_path_factory, make_cli):
    """teacher -> logits -> distilled student and a baseline, two seeds each, and their comparison."""
    root = tmp_path_factory.mktemp("lineage") / "store"
    cli = make_cli(root)
    cli("train-teacher", "--epochs", "2", "--name", "t", "-q")
    cli("cache-logits", "t", "--name", "lg", "-q")
    for seed in (0, 1):
        cli("baseline", "--epochs", "2", "--seed", seed, "--name", f"b{seed}", "-q")
        cli("distill", "--logits", "lg", "--epochs", "2", "--temperature", "2", "--seed", seed, "--name", f"d{seed}",
            "-q")
    # the baseline second, so a rebuilt compare must carry its labels' order and baseline explicitly
    compared = cli("compare", "d0,d1", "b0,b1", "--label", "kd", "--label", "baseline", "--baseline", "baseline",
                   "--name", "cmp")
    assert compared.exit_code == 0, compared.stderr
    return cli, Store(root)


def test_lineage_tree_shows_every_stage_config_and_command(chain):
    cli, store = chain
    result = cli("artifacts", "lineage", "d1")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    ids = {name: store.resolve(name)[:12] for name in ("t", "lg", "d1")}
    for stage, name in (("train-teacher", "t"), ("cache-logits", "lg"), ("distill", "d1")):
        assert f"{stage} {ids[name]}" in text
    assert "data digits (fingerprint" in text and "temperature=2.0" in text
    commands = text.split("rebuild, in order:")[1].split()
    assert f"--logits {ids['lg']}" in " ".join(commands) and f"--teacher {ids['t']}" in " ".join(commands)


@pytest.mark.parametrize("fmt, start", [("mermaid", "graph TD"), ("dot", "digraph lineage {")])
def test_lineage_as_a_graph(chain, fmt, start):
    cli, store = chain
    text = cli("artifacts", "lineage", "d0", "--format", fmt).stdout
    assert text.startswith(start)
    lg, d0 = store.resolve("lg")[:12], store.resolve("d0")[:12]
    assert (f"n{lg} -->|logits| n{d0}" if fmt == "mermaid" else f'n{lg} -> n{d0} [label="logits"];') in text


def test_bad_lineage_input_is_one_line(chain):
    cli, _ = chain
    for args in (("artifacts", "lineage", "nope"), ("artifacts", "lineage", "d0", "--format", "svg"),
                 ("card", "nope")):
        result = cli(*args)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_printed_commands_rebuild_the_same_artifact_in_a_fresh_store(chain, tmp_path, make_cli):
    cli, store = chain
    lines = _rebuild_commands(cli("artifacts", "lineage", "d1").stdout)
    assert [line.split()[1] for line in lines] == ["train-teacher", "cache-logits", "distill"]
    fresh_root = tmp_path / "fresh"
    rebuilt_ids = _run_each(lines, make_cli(fresh_root))
    rebuilt_store = Store(fresh_root)
    for name, rebuilt_id in zip(("t", "lg", "d1"), rebuilt_ids, strict=True):
        original, rebuilt = store.get(name), rebuilt_store.get(rebuilt_id)
        assert _measured(rebuilt) == _measured(original)
        assert _weights_hash(rebuilt) == _weights_hash(original)
        assert rebuilt.id == original.id  # refs as typed stay out of the content id: the very same artifacts


def test_card_has_teacher_data_recipe_ci_comparison_and_lineage(chain, tmp_path):
    cli, store = chain
    out = tmp_path / "cards" / "d0.md"
    result = cli("card", "d0", "--out", out)
    assert result.exit_code == 0, result.stderr
    card = out.read_text()
    teacher = store.get("t")
    assert card.startswith("# Model card: d0")
    assert f"`{teacher.id[:12]}`" in card and "digits-teacher" in card
    assert store.get("d0").manifest["data_fingerprint"] in card
    assert "| temperature | 2 |" in card and "| logits | lg (" in card
    assert "of group **kd** over seeds [0, 1]" in card and "95% CI" in card
    assert "| kd - baseline |" in card
    assert "```sh" in card and f"kdcli distill --epochs 2 --logits {store.resolve('lg')[:12]}" in card


def test_command_line_uses_parent_ids_and_only_changed_options():
    line = command_line("distill", {"logits": "my/logits", "temperature": 4.0, "epochs": 7, "model_args": ["a=1"],
                                    "compile": True, "seed": 0}, {"logits": "ab" * 32}, "cd" * 32)
    assert line == "kdcli distill --model-arg a=1 --epochs 7 --compile --logits abababababab --temperature 4"
    assert command_line("sweep", {}, {}, "cd" * 32) is None


def test_a_compare_reports_commands_rebuild_the_same_comparison_in_a_fresh_store(chain, tmp_path, make_cli):
    cli, store = chain
    lines = _rebuild_commands(cli("artifacts", "lineage", "cmp").stdout)
    assert sorted(line.split()[1] for line in lines) == sorted(
        ["train-teacher", "cache-logits", "baseline", "baseline", "distill", "distill", "compare"])
    assert lines[-1].split()[1] == "compare" and "--baseline baseline" in lines[-1]
    report_id = _run_each(lines, make_cli(tmp_path / "fresh"))[-1]
    rebuilt = Store(tmp_path / "fresh").get(report_id, kind="report")
    original = store.get("cmp", kind="report").manifest
    typed = {k: v for k, v in original["config"].items() if k != "groups"}  # the groups as typed: names
    assert {k: v for k, v in rebuilt.manifest["config"].items() if k != "groups"} == typed
    for key in ("baseline", "metric", "seeds", "groups", "comparisons"):
        assert rebuilt.manifest["result"][key] == original["result"][key], key
