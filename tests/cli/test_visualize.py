"""visualize-temperature (from a model and from its cached logits) and plot curves: PNGs written,
recorded as report artifacts, the numbers right, bad input refused in one line."""

from __future__ import annotations

import json

import pytest

from kdcli.stats import softmax, softmax_entropy
from kdcli.store import Store

FAST = ["--device", "cpu", "-q"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def made(tmp_path_factory, make_cli):
    """A 1-epoch teacher 't', its logits table 'tl' (float32), students 's/0', 's/1'. Returns (store, invoke)."""
    store = Store(tmp_path_factory.mktemp("visualize") / "store")
    invoke = make_cli(store.root)

    assert invoke("train-teacher", *FAST, "--epochs", "1", "--name", "t").exit_code == 0
    assert invoke("cache-logits", "t", *FAST, "--dtype", "float32", "--name", "tl").exit_code == 0
    for seed in (0, 1):
        assert invoke("baseline", *FAST, "--epochs", "2", "--seed", seed, "--name", f"s/{seed}").exit_code == 0
    return store, invoke


def test_temperature_view_from_model_and_from_logits(made, tmp_path):
    store, invoke = made
    temperatures = [1.0, 4.0, 10.0]
    runs = {}
    for source in ("t", "tl"):
        result = invoke("visualize-temperature", source, "--temperatures", "1,4,10", "--index", "5", "--count", "2",
                        "--out", tmp_path / source, "--json")
        assert result.exit_code == 0, result.stderr
        assert "█" in result.stderr and "entropy (nats)" in result.stderr and "(true)" in result.stderr
        runs[source] = out = json.loads(result.stdout)
        report = store.get(out["id"], kind="report")
        assert [s["index"] for s in out["samples"]] == [5, 6]
        for sample in out["samples"]:
            png = (tmp_path / source / sample["figure"].split("/")[-1]).read_bytes()
            assert png.startswith(PNG) and bytes(report.tensor(sample["figure"].split("/")[-1]).numpy()) == png
    table = store.get("tl").tensor("test")
    for sample in runs["tl"]["samples"]:
        z = table[sample["index"]]
        assert sample["entropy"] == pytest.approx(softmax_entropy(z, temperatures))
        assert sample["probabilities"][1] == pytest.approx(softmax(z, 4.0).tolist())
        assert sample["predicted"] == int(z.argmax())
    # the teacher run now gives the numbers it cached then
    for a, b in zip(runs["t"]["samples"], runs["tl"]["samples"], strict=True):
        assert a["true_class"] == b["true_class"]
        assert a["entropy"] == pytest.approx(b["entropy"], abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["tl", "--temperatures", "1,0"], "--temperatures must all be > 0, got 0"),
    (["tl", "--temperatures", "1,hot"], "--temperatures expects comma-separated numbers"),
    (["tl", "--index", "360"], "--index 360 with --count 1 is out of range: the test set of digits has 360 samples"),
    (["t", "--index", "-1"], "--index -1 with --count 1 is out of range"),
    (["t", "--index", "359", "--count", "2"], "out of range"),
    (["tl", "--dataset", "mnist"], "--dataset applies to model sources"),
    (["t", "--dataset", "digts"], "did you mean digits"),
    (["nothere"], "unknown artifact 'nothere'"),
])
def test_temperature_view_refusals(made, tmp_path, args, message):
    _, invoke = made
    result = invoke("visualize-temperature", *args, "--out", tmp_path)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_plot_curves(made, tmp_path):
    store, invoke = made
    out = tmp_path / "figs" / "curves.png"
    result = invoke("plot", "curves", "t", "s/*", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert list(payload["runs"]) == ["t", "s/* seed 0", "s/* seed 1"]
    png = out.read_bytes()
    assert png.startswith(PNG) and bytes(store.get(payload["id"], kind="report").tensor("curves.png").numpy()) == png
    refused = invoke("plot", "curves", "tl", "--out", out)
    assert refused.exit_code == 2 and "is a logits artifact; a group holds model or export artifacts" in refused.stderr
