"""Hugging Face causal language models as kdcli models: built from a config for the data's vocabulary
and context, (B, L) ids -> (B, L, V) logits, a context past the positions refused, and a saved
model that loads back offline."""

from __future__ import annotations

import pytest
import torch

from kdcli.errors import UsageError
from kdcli.models import build_model, parameter_count
from kdcli.models.causal_lm import config_args, hf_causal, is_causal_lm_dir, load_pretrained_causal


@pytest.mark.parametrize("name", ["lm-teacher", "lm-student"])
def test_presets_map_ids_to_next_token_logits(name):
    torch.manual_seed(0)
    model = build_model(name, (16,), 50)
    ids = torch.randint(0, 50, (2, 16))
    logits = model(ids)
    assert logits.shape == (2, 16, 50) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_student_has_at_most_a_tenth_of_the_teachers_parameters_on_bytes():
    teacher, student = build_model("lm-teacher", (128,), 256), build_model("lm-student", (128,), 256)
    assert parameter_count(student) <= parameter_count(teacher) / 10


def test_model_args_size_a_llama_and_causality_holds():
    torch.manual_seed(0)
    model = build_model("hf-causal:llama", (8,), 30, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8).eval()
    ids = torch.randint(0, 30, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 30
    with torch.no_grad():  # a later token never changes an earlier position's logits
        assert torch.allclose(model(ids)[0, :-1], model(changed)[0, :-1], atol=1e-6)


def test_a_context_past_the_models_positions_is_refused_in_one_line():
    with pytest.raises(UsageError, match="--context 300 is longer than hf-causal:gpt2's 256 positions"):
        build_model("lm-student", (300,), 256)
    with pytest.raises(UsageError, match="language model"):
        build_model("lm-student", (1, 8, 8), 10)


def test_a_saved_model_loads_offline_and_its_config_rebuilds_it(tmp_path):
    torch.manual_seed(0)
    model = hf_causal("gpt2", (8,), 40, n_layer=1, n_embd=16, n_head=2, n_positions=8)
    model.lm.save_pretrained(tmp_path)
    assert is_causal_lm_dir(str(tmp_path)) and not is_causal_lm_dir(str(tmp_path / "nothing"))
    loaded, model_type, args = load_pretrained_causal(str(tmp_path))
    rebuilt = hf_causal(model_type, (8,), 40, **args)
    rebuilt.load_state_dict(loaded.state_dict())
    rebuilt.eval()
    ids = torch.randint(0, 40, (2, 8))
    with torch.no_grad():
        assert torch.allclose(rebuilt(ids), model.eval()(ids), atol=1e-6)
    assert config_args(model.lm.config)["n_embd"] == 16
    with pytest.raises(UsageError, match="does not exist"):
        load_pretrained_causal(str(tmp_path / "missing"))
