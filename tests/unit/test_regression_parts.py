"""Seed 001's regression pieces: data loaders, MLPs, the distillation terms and their objective."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from kdcli.data import DataSpec, load_dataset
from kdcli.data.regression import generate_synthetic, read_csv_table, synthetic_target
from kdcli.engine import Batch
from kdcli.errors import UsageError
from kdcli.losses.feature_methods import FeatureProjector, hint_loss
from kdcli.losses.regression import (
    gradient_mse,
    hard_mse,
    hp_mse,
    loss_input_gradient,
    regression_distill_terms,
)
from kdcli.models import MODELS, build_model, parameter_count
from kdcli.models.mlp import MLP
from kdcli.stages.objectives.regression import RegressionObjective

# ---------------------------------------------------------------- data


def test_synthetic_target_hand_computed_points():
    X = np.zeros((3, 10))
    # all zeros: 0 + 0.5*cos(0) + 0 + 0 - 1.5*exp(0) + 0.1*[0 > 0] = 0.5 - 1.5
    expected = [-1.0]
    # x0=1, x1=pi/2, x2=1, x3=0, x4=1, x5=0.5: sin(pi/2) + 0.5*cos(pi) + 0 + 0.2 - 1.5/e + 0.1
    X[1, :6] = [1.0, math.pi / 2, 1.0, 0.0, 1.0, 0.5]
    expected.append(1.0 - 0.5 + 0.2 - 1.5 / math.e + 0.1)
    # x0=0, x2=0.5, x3=ln(3)/2 (tanh = 2/4), x4=-2, x5=-1; distractors 6..9 set: 0 + 0 + 0.5 + 0.8 - 1.5 + 0
    X[2, :6] = [0.0, 1.7, 0.5, math.log(3) / 2, -2.0, -1.0]
    X[2, 6:] = [1.9, -1.9, 0.7, -0.3]
    expected.append(0.5 + 0.8 - 1.5)
    np.testing.assert_allclose(synthetic_target(X), expected, atol=1e-12)


def test_generator_reproduces_seed_stream():
    X, y = generate_synthetic()
    assert X.shape == (2000, 10) and y.shape == (2000,) and X.dtype == y.dtype == np.float32
    state = np.random.get_state()
    try:  # seed 001 seeds the global generator, then draws X and the noise from it
        np.random.seed(42)
        seed_x = np.random.uniform(-2, 2, (2000, 10))
        seed_noise = np.random.normal(0, 0.1, 2000)
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(X, seed_x.astype(np.float32))
    np.testing.assert_array_equal(y, (synthetic_target(seed_x) + seed_noise).astype(np.float32))
    residual = y - synthetic_target(X)
    assert abs(residual.std() - 0.1) < 0.01 and abs(residual.mean()) < 0.01


def test_synthetic_loader_split_and_pool_only_standardization():
    from sklearn.model_selection import train_test_split

    data = load_dataset(DataSpec("synthetic-regression", val_fraction=0.1, split_seed=0))
    assert data.task == "regression" and data.num_outputs == 1 and data.input_shape == (10,)
    assert data.x_pool.shape == (1600, 10) and data.y_pool.shape == (1600,)
    assert data.x_test.shape == (400, 10) and data.y_test.shape == (400,)
    assert data.x_pool.dtype == data.y_pool.dtype == torch.float32
    assert len(data.train_idx) == 1440 and len(data.val_idx) == 160
    assert data.scale == 1.0 and data.mean == () and data.std == ()
    assert torch.equal(data.prepare(data.x_test), data.x_test)
    # pool standardized with its own statistics; the test part keeps an offset
    assert torch.allclose(data.x_pool.mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(data.x_pool.std(0, unbiased=False), torch.ones(10), atol=1e-4)
    assert data.x_test.mean(0).abs().max() > 1e-3
    X, y = generate_synthetic()
    pool_x, test_x, pool_y, test_y = train_test_split(X, y, test_size=0.2, random_state=42)
    mean, std = pool_x.mean(0), pool_x.std(0)
    np.testing.assert_allclose(data.x_test.numpy(), (test_x - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(data.y_test.numpy(), test_y)  # targets stay raw, as in seed 001
    again = load_dataset(DataSpec("synthetic-regression", val_fraction=0.1, split_seed=0))
    assert again.fingerprint == data.fingerprint


def test_synthetic_loader_options():
    data = load_dataset(DataSpec("synthetic-regression", extra={"n_samples": 100, "n_features": 7, "noise": 0.0}))
    assert data.x_pool.shape == (80, 7) and data.x_test.shape == (20, 7)
    with pytest.raises(UsageError, match="--n-features"):
        load_dataset(DataSpec("synthetic-regression", extra={"n_features": 4}))
    with pytest.raises(UsageError, match="--n-samples"):
        load_dataset(DataSpec("synthetic-regression", extra={"n_samples": "many"}))


def test_diabetes_loader_standardizes_targets_with_pool_stats():
    data = load_dataset(DataSpec("diabetes"))
    assert data.x_pool.shape == (353, 10) and data.x_test.shape == (89, 10) and data.y_test.shape == (89,)
    assert abs(float(data.y_pool.mean())) < 1e-5 and abs(float(data.y_pool.std(unbiased=False)) - 1) < 1e-4
    assert abs(float(data.y_test.mean())) > 1e-3
    assert load_dataset(DataSpec("diabetes")).fingerprint == data.fingerprint


def _write_csv(path, rows):
    path.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    return path


def test_csv_loader(tmp_path):
    rng = np.random.RandomState(0)
    rows = [["a", "b", "price"]] + [[f"{a:.4f}", f"{b:.4f}", f"{3 * a - b:.4f}"] for a, b in rng.randn(50, 2)]
    path = _write_csv(tmp_path / "t.csv", rows)
    data = load_dataset(DataSpec(f"csv:{path}", extra={"target": "price"}))
    assert data.x_pool.shape == (40, 2) and data.y_pool.shape == (40,) and data.x_test.shape == (10, 2)
    assert torch.allclose(data.x_pool.mean(0), torch.zeros(2), atol=1e-5)
    assert load_dataset(DataSpec(f"csv:{path}", extra={"target": "price"})).fingerprint == data.fingerprint
    scaled = load_dataset(DataSpec(f"csv:{path}", extra={"target": "price", "standardize_target": True}))
    assert abs(float(scaled.y_pool.mean())) < 1e-5


@pytest.mark.parametrize("rows, extra, message", [
    ([["a", "y"], [1, 2]], {"target": "price"}, r"no column 'price'; columns: a, y"),
    ([["a", "y"], [1, 2], ["x1", 3]], {"target": "y"}, r"column 'a' has a non-numeric value 'x1' at line 3"),
    ([["a", "y"], [1, 2], [4, "nan"]], {"target": "y"}, r"column 'y' is empty or NaN at line 3"),
    ([["a", "y"], [1, 2], ["", 5]], {"target": "y"}, r"column 'a' is empty or NaN at line 3"),
    ([["a", "y"], [1, 2]], {}, r"target column"),
])
def test_csv_errors(tmp_path, rows, extra, message):
    path = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(UsageError, match=message) as info:
        load_dataset(DataSpec(f"csv:{path}", extra=extra))
    assert "\n" not in str(info.value)


def test_csv_missing_file(tmp_path):
    with pytest.raises(UsageError, match="csv file not found: .*nope.csv"):
        read_csv_table(tmp_path / "nope.csv", "y")


# ---------------------------------------------------------------- models


def test_seed001_models_match_seed_architectures():
    counts = {"seed001-teacher": 109_825, "seed001-expert": 126_337, "seed001-student": 6_977}
    for name, count in counts.items():
        model = build_model(name, (10,), 1)
        assert parameter_count(model) == count
        assert model(torch.randn(5, 10)).shape == (5, 1)
    expert = build_model("seed001-expert", (10,), 1)
    assert [hasattr(block, "drop") for block in expert.hidden] == [True, True, False, True, False]
    assert isinstance(expert.hidden[0].act, nn.LeakyReLU) and expert.hidden[0].act.negative_slope == 0.01
    assert isinstance(build_model("seed001-student", (10,), 1).hidden[0].act, nn.ReLU)


def test_mlp_initializes_like_seed_sequential():
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                        nn.Linear(32, 1))
    torch.manual_seed(3)
    student = build_model("seed001-student", (10,), 1)
    x = torch.randn(8, 10)
    torch.testing.assert_close(student(x), seq(x))


def test_mlp_factory_args():
    model = build_model("mlp", (10,), 3, widths="16,8", activation="elu", dropout=0.2)
    assert model.widths == (16, 8) and isinstance(model.hidden[1].act, nn.ELU)
    assert model.hidden[0].drop.p == 0.2 and model(torch.randn(4, 10)).shape == (4, 3)
    assert build_model("mlp", (10,), 1, widths=[5]).widths == (5,)
    assert build_model("mlp", (10,), 1, widths=7).feature_names() == ["hidden.0"]
    assert build_model("mlp", (1, 4, 4), 2)(torch.randn(3, 1, 4, 4)).shape == (3, 2)  # flattens
    assert "hidden.1" in dict(model.named_modules()) and model.feature_width("hidden.1") == 8
    assert "mlp" in MODELS.names()
    with pytest.raises(UsageError, match="activation"):
        build_model("mlp", (10,), 1, activation="swish")
    with pytest.raises(UsageError, match="widths"):
        build_model("mlp", (10,), 1, widths="a,b")
    with pytest.raises(UsageError, match="dropout"):
        build_model("mlp", (10,), 1, widths="4,4", dropout="0.1,0.2,0.3")
    with pytest.raises(UsageError, match="bad --model-arg"):
        build_model("mlp", (10,), 1, depth=3)


# ---------------------------------------------------------------- losses


def _pair(seed=0):
    torch.manual_seed(seed)
    teacher = MLP((6,), 1, widths=(12, 8), activation="leaky_relu")
    student = MLP((6,), 1, widths=(5, 4))
    x, y = torch.randn(16, 6), torch.randn(16)
    return student, teacher, x, y


def _batch(x, y):
    return Batch(x, y, torch.arange(len(x)))


def _has_param_grad(term, model):
    grads = torch.autograd.grad(term, list(model.parameters()), allow_unused=True, retain_graph=True)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_each_term_has_student_gradient():
    student, teacher, x, y = _pair()
    objective = RegressionObjective(student, teacher, w_hard=1, w_hp=1, w_feat=1, w_gr=1, input_shape=(6,))
    out, terms = objective(student, _batch(x, y), True)
    assert out.shape == (16,) and set(terms) == {"hard", "hp", "feat", "gr", "loss"}
    for name in ("hard", "hp", "feat", "gr"):
        assert terms[name].dim() == 0 and torch.isfinite(terms[name])
        assert _has_param_grad(terms[name], student), name
    torch.testing.assert_close(terms["loss"], sum(terms[k] for k in ("hard", "hp", "feat", "gr")))
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert len(list(objective.parameters())) == 2  # one projector: Linear(4 -> 8)


def test_terms_vanish_when_student_equals_teacher():
    _, teacher, x, y = _pair()
    student = copy.deepcopy(teacher)
    objective = RegressionObjective(student, teacher, w_hard=0.2, w_hp=0.5, w_feat=0.3, w_gr=0.3,
                                    pairs=[("hidden.1", "hidden.1")], input_shape=(6,))
    objective.projectors[0].set_identity()
    _, terms = objective(student, _batch(x, y), True)
    for name in ("hp", "feat", "gr"):
        assert float(terms[name].detach()) == pytest.approx(0.0, abs=1e-12), name
    assert float(terms["hard"].detach()) > 0


def test_pure_pieces():
    s, t, y = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]), torch.tensor([0.0, 2.0])
    assert float(hard_mse(s, y)) == pytest.approx(0.5) and float(hp_mse(s, t)) == pytest.approx(2.0)
    terms = regression_distill_terms(s, t, y, w_hard=0.3, w_hp=0.7)
    assert float(terms["loss"]) == pytest.approx(0.3 * 0.5 + 0.7 * 2.0)
    projector = FeatureProjector((3,), (3,)).set_identity()
    h = torch.randn(4, 3)
    assert float(hint_loss(*projector(h, h)).detach()) == 0.0
    assert FeatureProjector((3,), (5,))(h, torch.zeros(4, 5))[0].shape == (4, 5)
    x = torch.randn(4, 3, requires_grad=True)
    out = (x * torch.tensor([1.0, 2.0, 3.0])).sum(1)
    grad = loss_input_gradient(out, torch.zeros(4), x, create_graph=False)
    torch.testing.assert_close(grad, (2 / 4) * out.detach()[:, None] * torch.tensor([1.0, 2.0, 3.0]))
    assert float(gradient_mse(grad, grad)) == 0.0


def test_gradient_term_changes_student_gradient():
    student, teacher, x, y = _pair(1)

    def param_grads(w_gr):
        student.zero_grad()
        objective = RegressionObjective(student, teacher, w_hard=0.2, w_hp=0.5, w_gr=w_gr)
        _, terms = objective(student, _batch(x, y), True)
        terms["loss"].backward()
        return torch.cat([p.grad.flatten() for p in student.parameters()])

    without, with_gr = param_grads(0.0), param_grads(1000.0)
    assert not torch.allclose(without, with_gr)


def test_zero_weight_terms_skipped_and_no_teacher_needed():
    student, _, x, y = _pair()
    objective = RegressionObjective(student, None, w_hard=1.0)
    out, terms = objective(student, _batch(x, y), True)
    assert set(terms) == {"hard", "loss"} and list(objective.parameters()) == []
    with pytest.raises(UsageError, match="need a teacher"):
        RegressionObjective(student, None, w_hard=0.3, w_hp=0.7)
    with pytest.raises(UsageError, match="all loss weights are zero"):
        RegressionObjective(student, None, w_hard=0.0)
    with pytest.raises(UsageError, match="no layer 'hidden.9'"):
        RegressionObjective(student, _pair()[1], w_feat=1.0, pairs=[("hidden.0", "hidden.9")], input_shape=(6,))


def test_evaluation_under_no_grad():
    student, teacher, x, y = _pair()
    objective = RegressionObjective(student, teacher, w_hard=0.2, w_hp=0.5, w_feat=0.1, w_gr=0.3, input_shape=(6,))
    with torch.no_grad():
        out, terms = objective(student, _batch(x, y), False)
    assert out.shape == (16,) and not out.requires_grad
    assert set(terms) == {"hard", "hp", "feat", "gr", "loss"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in terms.values())
    _, trained = objective(student, _batch(x, y), True)
    for name in terms:
        torch.testing.assert_close(terms[name], trained[name].detach())


def test_feature_width_by_probe():
    student, teacher, x, y = _pair()
    wrapped = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 1))
    objective = RegressionObjective(wrapped, teacher, w_feat=1.0, pairs=[("hidden.0", "1")], input_shape=(6,))
    assert objective.projectors[0].proj.in_features == 9 and objective.projectors[0].proj.out_features == 12
    _, terms = objective(wrapped, _batch(x, y), True)
    assert _has_param_grad(terms["feat"], wrapped)
