"""Issue 14's CUDA defects that a CPU can show: resume across --compile, precision off CUDA, the
torch version the code needs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from kdcli import engine
from kdcli.augment import ViewSet
from kdcli.config import build
from kdcli.errors import UsageError
from kdcli.models import build_model
from kdcli.reporting import Reporter
from kdcli.stages.common import load_data
from kdcli.stages.configs import BaselineConfig
from kdcli.stages.objectives.labels import hard_label_objective

REPO = Path(__file__).resolve().parents[2]


class KilledAfter(engine.Checkpoint):
    """Writes like a checkpoint, then 'crashes' once epoch `epoch` is on disk."""

    def __init__(self, path, epoch: int):
        super().__init__(path)
        self.epoch = epoch

    def save(self, state):
        super().save(state)
        if state["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def setup():
    cfg = build(BaselineConfig, None, {"epochs": 3, "patience": 0, "seed": 1, "batch_size": 128,
                                       "checkpoint_every": 0.0})
    return cfg, load_data(cfg)


def _fit(cfg, data, checkpoint, compiled: bool):
    torch.manual_seed(cfg.seed)
    model = build_model("digits-student", data.input_shape, 10)
    trained = torch.compile(model, backend="eager") if compiled else model  # the wrapper, without a C++ build
    engine.fit(trained, engine.DeviceData(data, torch.device("cpu")), hard_label_objective("classification"), cfg,
               ViewSet(), Reporter(quiet=True), checkpoint)
    return model


@pytest.mark.parametrize("first, second", [(True, False), (False, True)])
def test_resume_across_compile_on_and_off(setup, tmp_path, first, second):
    """--compile is outside the cache key, so both runs share one checkpoint: it holds the module's own
    state (no `_orig_mod.` keys) and a run with the other setting resumes it, to the same weights."""
    cfg, data = setup
    expected = _fit(cfg, data, None, compiled=False)
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, data, KilledAfter(tmp_path / "c.pt", 1), compiled=first)
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod.") for key in [*saved["model"], *saved["best_state"]])
    resumed = _fit(cfg, data, engine.Checkpoint(tmp_path / "c.pt"), compiled=second)
    for key, value in expected.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_off_cuda_is_refused(precision):
    """It used to run fp32 silently under a cache key saying bf16/fp16, which a GPU run would then reuse."""
    with pytest.raises(UsageError, match=f"--precision {precision} needs a CUDA device"):
        engine.autocast(torch.device("cpu"), precision)
    assert engine.autocast(torch.device("cpu"), "fp32") is not None  # fp32 runs anywhere


def test_cli_refuses_bf16_on_cpu_with_one_line(cli, store):
    result = cli("baseline", "--epochs", "1", "--precision", "bf16", "--device", "cpu")
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --precision bf16") and "CUDA" in line
    assert store.ids() == [] and store.runs() == []


def test_required_torch_has_what_the_code_uses():
    """torch.amp.GradScaler("cuda"), fused CPU optimizers and is_bf16_supported(including_emulation=)
    arrived by torch 2.5; the old floor (2.2) installed a torch without them."""
    (floor,) = re.findall(r'^\s*"torch>=([\d.]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert tuple(int(part) for part in floor.split(".")[:2]) >= (2, 5)
    assert "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters
    torch.amp.GradScaler("cuda", enabled=False)
    parameter = torch.nn.Parameter(torch.ones(2))
    for optimizer in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        parameter.grad = torch.ones(2)
        optimizer([parameter], lr=0.1, fused=True).step()


def test_out_of_gpu_memory_is_one_line(cli, store, monkeypatch):
    from kdcli.stages import runner

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79 GiB total)\nmore")

    monkeypatch.setattr(runner, "fit", out_of_memory)
    result = cli("baseline", "--epochs", "1", "--device", "cpu")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    line = lines[-1]
    assert sum(x.startswith("error:") for x in lines) == 1 and line.startswith("error: out of GPU memory: lower --batch-size") and "Tried to allocate 2.00 GiB" in line


def test_float16_logits_table_refuses_overflow():
    """A logit above float16's 65504 became inf in the table, then NaN in the KD loss (issue 14, item 11)."""
    from kdcli.errors import KdcliError
    from kdcli.stages.cache_logits import view_logits

    cfg = build(BaselineConfig, None, {})
    data = load_data(cfg)

    class Huge(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), 7e4)

    with pytest.raises(KdcliError, match="non-finite teacher logits.*--dtype float32"):
        view_logits(Huge(), data, ViewSet(), 256, torch.device("cpu"), "fp32", lambda n: None, dtype=torch.float16)
    table = view_logits(Huge(), data, ViewSet(), 256, torch.device("cpu"), "fp32", lambda n: None,
                        dtype=torch.float32)["logits"]
    assert bool(torch.isfinite(table).all())


def test_process_group_backend_follows_the_tensor_device():
    """It was NCCL whenever CUDA existed, so a --device cpu run on a GPU host gave NCCL CPU tensors."""
    from kdcli import distributed

    assert distributed.backend(cuda_available=True) == "cpu:gloo,cuda:nccl"
    assert distributed.backend(cuda_available=False) == "gloo"


def test_each_rank_gets_its_own_gpu_or_a_clear_refusal():
    """`device.index or current_device()` read cuda:0 as "no index"; 2 ranks on 1 GPU failed in set_device."""
    from kdcli import distributed

    assert distributed.rank_device(torch.device("cuda"), 1, 2) == torch.device("cuda", 1)
    assert distributed.rank_device(torch.device("cpu"), 1, 0) == torch.device("cpu")  # no GPU touched
    with pytest.raises(UsageError, match="LOCAL_RANK 1 but this host has 1 GPU"):
        distributed.rank_device(torch.device("cuda"), 1, 1)
    with pytest.raises(UsageError, match="each rank uses its own GPU"):
        distributed.rank_device(torch.device("cuda", 0), 1, 2)


def test_compile_with_the_gradient_term_is_refused():
    from kdcli.stages.configs import DistillConfig

    with pytest.raises(UsageError, match="--w-gr needs a double backward"):
        build(DistillConfig, None, {"dataset": "synthetic-regression", "teacher": "t", "w_gr": 0.3, "compile": True})
