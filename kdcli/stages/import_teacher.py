"""import-teacher: a pretrained teacher from outside becomes a model artifact in the store.

Sources: `hf:ID_OR_DIR` (transformers AutoModelForImageClassification, inputs resized as the model
needs, seed 000), `timm:NAME` / `torchvision:NAME` (kdcli.models.zoo, weights from --weights or the
library's hub), `torchhub:OWNER/REPO:ENTRY` or a local checkpoint (.pt via torch.load
weights_only=True, or .safetensors) loaded into a registry model. The stored artifact rebuilds
offline, so a teacher no longer depends on a download link. Its test accuracy is reported.
"""

from __future__ import annotations

from pathlib import Path

from kdcli.config import parse_kv
from kdcli.engine import predict, prepare_model, test_metrics
from kdcli.errors import UsageError
from kdcli.models import build_model, parameter_count, state_hash
from kdcli.models.external import load_checkpoint_into, load_hf_classifier, load_state_into, load_torchhub
from kdcli.models.zoo import load_weights
from kdcli.stages.common import RunContext, StageResult, load_data, model_spec
from kdcli.stages.configs import ZOO_PREFIXES, ImportConfig
from kdcli.stages.runner import Stage, run_cached


def load_source(cfg: ImportConfig, data):
    """-> (module, rebuildable model spec) for the configured source."""
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
    if data.task != "classification":
        raise UsageError("import-teacher imports image classifiers; train regression teachers with train-teacher")
    model, spec = load_source(cfg, data)
    weights = state_hash(model)

    def produce(key: str):
        device_model = prepare_model(model.eval(), ctx.device, False)
        outputs = predict(device_model, data, data.x_test, cfg.eval_batch_size, ctx.device, cfg.precision)
        if outputs.shape[1] != data.num_outputs:
            raise UsageError(f"{cfg.source} outputs {outputs.shape[1]} classes but {data.name} has {data.num_outputs}")
        metrics = test_metrics(data.task, outputs, data.y_test)
        metrics["params"] = parameter_count(model)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        ctx.reporter.info(f"import-teacher: {cfg.source} on {data.name}: test acc {metrics['test_acc']:.2f}%")
        return "model", state, {"model": spec, "metrics": metrics, "source": cfg.source,
                                "data_fingerprint": data.fingerprint, "data": data.describe()}

    return run_cached(ctx, IMPORT_TEACHER, cfg, {"data": data.fingerprint, "weights": weights}, produce)


IMPORT_TEACHER = Stage("import-teacher", ImportConfig, import_teacher,
                       "Import a pretrained teacher (hf:, timm:, torchvision:, torchhub:, or a checkpoint file) "
                       "and report its test accuracy.",
                       ("kdcli.engine", "kdcli.models", "kdcli.data", "kdcli.stages.import_teacher",
                        "kdcli.stages.common"), positional="source")
