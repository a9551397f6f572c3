import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from kdcli import plots
from kdcli.errors import UsageError

HISTORY = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_acc": 0.5 + 0.04 * e} for e in range(1, 6)]
REGRESSION = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_mse": 0.5 / e} for e in range(1, 6)]

CASES = {
    "paired": lambda out: plots.paired_plot(
        {"scratch": [0.45, 0.46, 0.44], "kd": [0.43, 0.42, 0.44]}, [0, 1, 2],
        {"kd": {"values": [-0.02, -0.04, 0.0], "mean": -0.02, "low": -0.07, "high": 0.03}}, "test MSE", out,
        reference=0.35),
    "paired_one_seed": lambda out: plots.paired_plot(
        {"a": [1.0], "b": [2.0]}, [0], {"b": {"values": [1.0], "mean": 1.0, "low": float("nan"),
                                              "high": float("nan")}}, "acc", out),
    "grid": lambda out: plots.grid_bar_chart(["0.1:0.9", "0.5:0.5", "0.9:0.1"], [0.34, 0.36, 0.41],
                                             [0.01, 0.02, 0.015], "test MSE", out),
    "temperature_curve": lambda out: plots.temperature_curve([1, 2, 3, 5, 10], [97.1, 97.5, 97.8, 97.6, 97.2],
                                                             [0.2, 0.1, 0.15, 0.2, 0.3], "accuracy (%)", out,
                                                             baseline=96.8, teacher=99.1),
    "temperature_bars": lambda out: plots.temperature_bars(torch.tensor([[1.0, 4.0, 3.5, 0.0, -1.0]]), [1, 5, 10],
                                                           2, ["a", "b", "c", "d", "e"], out),
    "temperature_bars_many": lambda out: plots.temperature_bars(np.linspace(-2, 6, 100), [1, 4], None, None, out),
    "curves": lambda out: plots.training_curves({"baseline": HISTORY, "kd": HISTORY[:3]}, out),
    "curves_regression": lambda out: plots.training_curves({"mlp": REGRESSION}, out),
}


@pytest.mark.parametrize("name", CASES)
def test_writes_png(name, tmp_path):
    out = tmp_path / "figs" / f"{name}.png"
    assert CASES[name](out) == out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert plt.get_fignums() == []


def test_bad_input_is_refused_and_closes_the_figure(tmp_path):
    with pytest.raises(UsageError):
        plots.grid_bar_chart(["a", "b"], [1.0], [0.1], "acc", tmp_path / "x.png")
    with pytest.raises(UsageError):
        plots.temperature_bars(np.zeros(3), [1.0], 0, ["a", "b"], tmp_path / "y.png")
    with pytest.raises(UsageError):
        plots.training_curves({}, tmp_path / "z.png")
    assert plt.get_fignums() == [] and not list(tmp_path.iterdir())
