"""Every bad input of a new user's audit: one line on stderr, exit 2, before any work, store unchanged.

Each case runs the real CLI against a store that already holds an artifact, a name and a tag; the
whole tree of the store (paths, sizes, modification times) must be the same afterwards, and no
store may appear where a bad --store pointed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.store import Store

CPU = ["--device", "cpu"]


class _RunsCode:
    """A pickle payload: unpickling it would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot write into (root writes anywhere but /proc)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with tempfile.TemporaryFile(dir=locked):
            pass
    except OSError:
        return locked / "store"
    return Path("/proc/kdcli-store")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The files and folders the cases point at."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    (tmp / "folder").mkdir()
    (tmp / "file.txt").write_text("not a folder\n")
    (tmp / "nan.yaml").write_text("lr: .nan\n")
    (tmp / "inf.yaml").write_text("temperature: .inf\nlogits: tl\n")
    (tmp / "big.yaml").write_text("# padding\n" * 120_000 + "epochs: 1\n")  # 1.2 MB
    (tmp / "text.pt").write_text("hello, not a checkpoint\n")
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCode(tmp / "pwned")}, tmp / "pickle.pt")
    return {"tmp": str(tmp), "folder": str(tmp / "folder"), "file": str(tmp / "file.txt"),
            "unwritable": str(_unwritable(tmp))}


# (arguments, a fragment of the one error line); {name} is filled from `files`
CASES = [
    # non-finite numbers, on the command line and through YAML
    (["distill", "--logits", "tl", "--temperature", "inf"], "--temperature must be a finite number"),
    (["distill", "--logits", "tl", "--temperature", "nan"], "--temperature must be a finite number"),
    (["baseline", "--lr", "nan"], "--lr must be a finite number"),
    (["baseline", "--lr", "inf"], "--lr must be a finite number"),
    (["baseline", "--config", "{tmp}/nan.yaml"], "--lr must be a finite number"),
    (["distill", "--config", "{tmp}/inf.yaml"], "--temperature must be a finite number"),
    (["baseline", "--epochs", "0"], "--epochs must be >= 1"),
    (["baseline", "--epochs", "-1"], "--epochs must be >= 1"),
    # values out of range, unknown names (with a suggestion) and artifacts
    (["distill", "--temperature", "0", "--logits", "x"], "--temperature must be > 0"),
    (["distill", "--alpha", "1.5", "--logits", "x"], "--alpha must be in [0, 1]"),
    (["baseline", "--model", "digits-studnt"], "did you mean digits-student"),
    (["baseline", "--dataset", "digts"], "did you mean digits"),
    (["distill", "--logits", "nothere"], "unknown artifact 'nothere'"),
    (["visualize-temperature", "kept", "--temperatures", "1,inf"], "--temperatures expects finite numbers"),
    # names and tags, checked before training
    (["baseline", "--name", "../evil"], "invalid name '../evil'"),
    (["baseline", "--name", "a/../../evil"], "invalid name"),
    (["baseline", "--tag", "a/b"], "invalid tag 'a/b'"),
    (["baseline", "--name", "79b799ea"], "read as an artifact id prefix"),
    (["compare", "tag:kept", "tag:kept", "--name", "../evil"], "invalid name '../evil'"),
    # config files and store roots
    (["baseline", "--config", "{folder}"], "is a directory; --config takes a YAML file"),
    (["baseline", "--config", "{tmp}/big.yaml"], "a config file may hold at most 1 MiB"),
    (["baseline", "--store", "{file}"], "is a file, not a directory"),
    (["baseline", "--store", "{file}/store"], "is a file, not a directory"),
    (["baseline", "--store", "{unwritable}"], "is not writable"),
    (["compare", "tag:kept", "tag:kept", "--store", "{file}"], "is a file, not a directory"),
    # devices and the options that need one
    (["baseline", "--device", "mps"], "no MPS device"),
    (["baseline", "--precision", "bf16", *CPU], "--precision bf16 autocasts on CUDA only"),
    (["baseline", "--compile", *CPU], "--compile applies on CUDA only"),
    # --out, --plot, --csv, --plot-dir: a file where a folder is expected, or the reverse
    (["compare", "tag:kept", "tag:kept", "--plot", "{folder}"], "--plot {folder} is a directory"),
    (["compare", "tag:kept", "tag:kept", "--csv", "{folder}"], "--csv {folder} is a directory"),
    (["compare", "tag:kept", "tag:kept", "--csv", "{file}/summary.csv"], "is a file, not a directory"),
    (["plot", "curves", "kept", "--out", "{folder}"], "--out {folder} is a directory"),
    (["visualize-temperature", "kept", "--out", "{file}"], "--out {file} is a file; --out takes a directory"),
    (["sweep", "--stage", "baseline", "--plot-dir", "{file}"], "--plot-dir {file} is a file"),
    # options that do not apply are refused, not ignored (they would change the cache key)
    (["distill", "--teacher", "kept", "--logits", "tl"], "not both"),
    (["baseline", "--target", "y"], "--target applies to csv only, not to --dataset digits"),
    (["baseline", "--n-samples", "100"], "--n-samples applies to synthetic-regression only"),
    (["baseline", "--image-size", "16"], "--image-size applies to imagefolder only"),
    (["baseline", "--task", "classification"], "--task applies to csv and npz only"),
    (["baseline", "--normalize", "none"], "--normalize applies to npz only"),
    # seeds that no generator takes, an empty grid value (issue 24's audit)
    (["baseline", "--seed", "99999999999999999999"], "--seed must be an integer in [0, 2^63 - 1]"),
    (["baseline", "--split-seed", "-1"], "--split-seed must be an integer in [0, 2^63 - 1]"),
    (["sweep", "baseline", "--seeds", "0-99999999999999999999"], "--seeds must be an integer in [0, 2^63 - 1]"),
    (["sweep", "distill", "--logits", "tl", "--grid", "temperature=1,,2"], "with no empty value"),
    # your own code: a malformed or missing py: name, stored code this command did not name
    (["baseline", "--model", "py:{tmp}/nowhere.py:Net"], "python file not found"),
    (["baseline", "--model", "py:model"], "expected py:FILE.py:NAME"),
    (["baseline", "--method-arg", "a=1"], "No such option: --method-arg"),
    # import-teacher
    (["import-teacher", "{tmp}/text.pt", "--model", "digits-teacher", *CPU], "is not a PyTorch checkpoint"),
    (["import-teacher", "{tmp}/pickle.pt", "--model", "digits-teacher", *CPU], "holds Python objects besides tensors"),
    (["import-teacher", "hf:/no/such/dir", *CPU], "directory '/no/such/dir' does not exist"),
    (["import-teacher", "hf:nobody/no-such-model", *CPU], "the hub is unreachable (offline)"),
    # Click's own usage errors, in kdcli's format
    (["baseline", "--bogus"], "error: No such option: --bogus"),
    (["baseline", "--epochs", "abc"], "error: Invalid value for '--epochs'"),
    (["no-such-command"], "error: No such command 'no-such-command'"),
    (["artifacts", "ls", "--bogus"], "error: No such option: --bogus"),
    (["compare"], "error: Missing argument 'groups'"),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` with its size and modification time (ns)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def kept_store(tmp_path, monkeypatch) -> Store:
    """A store holding one model artifact, named 'kept' and tagged 'kept'."""
    store = Store(tmp_path / "store")
    monkeypatch.setenv("KDCLI_STORE", str(store.root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the offline case: no network is tried, so it fails fast
    artifact = store.put("model", {"w": torch.zeros(2)}, {"stage": "baseline", "seed": 0, "metrics": {}})
    store.set_ref("kept", artifact.id)
    store.add_tag("kept", artifact.id)
    return store


@pytest.mark.parametrize("case", CASES, ids=[" ".join(args) for args, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_store(case, files, kept_store):
    args, fragment = case
    args, fragment = [a.format(**files) for a in args], fragment.format(**files)
    before = _tree(kept_store.root)
    bad_stores = [Path(args[i + 1]) for i, a in enumerate(args[:-1]) if a == "--store"]
    started = time.perf_counter()
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert _tree(kept_store.root) == before
    assert not any(p.exists() and p.is_dir() for p in bad_stores)
    assert not Path(files["tmp"], "pwned").exists()
    assert time.perf_counter() - started < 60  # the offline hub case included: no retries


def test_store_check_leaves_no_probe_behind(tmp_path):
    """The writability probe of a store that does not exist yet creates nothing."""
    from kdcli.cli.common import check_store_root

    check_store_root(tmp_path / "a" / "b", write=True)
    assert os.listdir(tmp_path) == []


def test_help_shows_every_default_at_80_columns():
    result = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    text = " ".join(" ".join(line.strip("│ ") for line in result.stdout.splitlines()).split())
    for default in ("[default: 100]", "(default 0.5)", "(default 4)", "[default: digits-student]",
                    "[default: digits]", "default kd"):
        assert default in text, default
