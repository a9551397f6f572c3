"""import-teacher: a pretrained teacher from outside becomes a model artifact in the store.

Sources: `hf:ID_OR_DIR` (transformers AutoModelForImageClassification, inputs resized as the model
needs, seed 000; on a text corpus a saved AutoModelForCausalLM directory, offline), `timm:NAME` / `torchvision:NAME` (kdcli.models.zoo, weights from --weights or the
library's hub), `torchhub:OWNER/REPO:ENTRY` or a local checkpoint (.pt via torch.load
weights_only=True, or .safetensors) loaded into a registry model. The stored artifact rebuilds
offline, so a teacher no longer depends on a download link. Its test metrics are reported.
"""

from __future__ import annotations

from pathlib import Path

from kdcli.config import parse_kv
from kdcli.engine import evaluate_test, predict, prepare_model
from kdcli.errors import UsageError
from kdcli.models import build_model, parameter_count, state_hash
from kdcli.models.causal_lm import is_causal_lm_dir, load_pretrained_causal
from kdcli.models.external import load_checkpoint_into, load_hf_classifier, load_state_into, load_torchhub
from kdcli.models.zoo import load_weights
from kdcli.stages.common import RunContext, StageResult, load_data, model_spec
from kdcli.stages.configs import ZOO_PREFIXES, ImportConfig
from kdcli.stages.registry import IMPORT_TEACHER
from kdcli.stages.runner import run_cached


def load_causal_source(cfg: ImportConfig, data):
    """A saved Hugging Face causal LM (hf:DIR, offline) for a text data set -> (CausalLM, spec); its
    vocabulary must be the data's tokenizer's and its positions must hold the context."""
    if not cfg.source.startswith("hf:") or not is_causal_lm_dir(cfg.source[3:]):
        raise UsageError(f"{data.name} is a text corpus: import a causal language model saved by save_pretrained, "
                         "as hf:DIR")
    model, model_type, args = load_pretrained_causal(cfg.source[3:])
    vocab = model.lm.config.vocab_size
    if vocab != data.num_outputs:
        raise UsageError(f"{cfg.source} has a vocabulary of {vocab} tokens but the tokenizer "
                         f"{data.tokenizer.get('spec')} has {data.num_outputs}: give the model's own tokenizer "
                         "directory as --tokenizer")
    if model.max_positions is not None and data.context > model.max_positions:
        raise UsageError(f"--context {data.context} is longer than {cfg.source}'s {model.max_positions} positions")
    return model, model_spec(f"hf-causal:{model_type}", args, data)


def load_source(cfg: ImportConfig, data):
    """-> (module, rebuildable model spec) for the configured source."""
    if data.task == "lm":
        return load_causal_source(cfg, data)
    if cfg.source.startswith("hf:"):
        model, spec = load_hf_classifier(cfg.source[3:], cfg.trust_remote_code, image_size=cfg.hf_image_size)
        return model, model_spec("hf", spec, data)
    args = parse_kv(cfg.model_args)
    if cfg.source.startswith(ZOO_PREFIXES):  # the architecture from the library, weights from --weights
        model = build_model(cfg.source, data.input_shape, data.num_outputs, **args)
        if cfg.weights:
            load_weights(model, cfg.weights, adapt=False)
        return model, model_spec(cfg.source, args, data)
    model = build_model(cfg.model, data.input_shape, data.num_outputs, **args)
    if cfg.source.startswith("torchhub:"):
        hub_model = load_torchhub(cfg.source[len("torchhub:"):], cfg.trust_remote_code)
        load_state_into(model, hub_model.state_dict(), f"torch.hub model {cfg.source!r}")
    else:
        path = Path(cfg.source)
        if not path.is_file():
            raise UsageError(f"checkpoint file not found: {path}")
        load_checkpoint_into(model, path)
    return model, model_spec(cfg.model, args, data)


def import_teacher(cfg: ImportConfig, ctx: RunContext) -> StageResult:
    data = load_data(cfg, ctx)
    if data.task == "regression":
        raise UsageError("import-teacher imports classifiers and language models; train regression teachers with "
                         "train-teacher")
    model, spec = load_source(cfg, data)
    weights = state_hash(model)

    def produce(key: str):
        device_model = prepare_model(model.eval(), ctx.device, False)
        if data.task == "classification":
            outputs = predict(device_model, data, data.x_test[:1], cfg.eval_batch_size, ctx.device, cfg.precision)
            if outputs.shape[1] != data.num_outputs:
                raise UsageError(f"{cfg.source} outputs {outputs.shape[1]} classes but {data.name} has "
                                 f"{data.num_outputs}")
        metrics, _ = evaluate_test(device_model, data, cfg.eval_batch_size, ctx.device, cfg.precision)
        metrics["params"] = parameter_count(model)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("test_"))
        ctx.reporter.info(f"import-teacher: {cfg.source} on {data.name}: {summary}")
        return "model", state, {"model": spec, "metrics": metrics, "source": cfg.source,
                                "data_fingerprint": data.fingerprint, "data": data.describe()}

    return run_cached(ctx, IMPORT_TEACHER, cfg, {"data": data.fingerprint, "weights": weights}, produce)

