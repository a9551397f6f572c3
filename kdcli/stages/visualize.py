"""Figures as stage functions: softmax(z/T) of a teacher (model or cached logits) and training curves.

Every figure is written where the caller says and recorded as a "report" artifact: the result JSON in
the manifest, each PNG as a uint8 tensor named after its file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdcli import plots, stats
from kdcli.engine import predict
from kdcli.errors import UsageError
from kdcli.stages.common import check_fits, check_logits_fit, data_of, load_model
from kdcli.stages.generate import language_model, prompt_ids
from kdcli.store import Artifact, Store

TOP_TOKENS = 12  # tokens shown of a language model's next-token distribution


def record_report(store: Store, report: str, result: dict, figures: list[Path], parents: dict,
                  config: dict | None = None) -> Artifact:
    """Store a report artifact: `result` (and the options that made it, `config`) in the manifest, each
    PNG's bytes as a uint8 tensor."""
    tensors = {Path(f).name: torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in figures}
    manifest = {"stage": report, "report": report, "result": result, "parents": parents,
                "figures": [str(f) for f in figures]}
    if config is not None:
        manifest["config"] = config
    return store.put("report", tensors, manifest)


@dataclass
class TemperatureViewConfig:
    source: str  # a model artifact (run on the test set) or a logits artifact (its clean "test" logits)
    temperatures: list[float] = field(default_factory=lambda: [1.0, 5.0, 10.0])  # one panel per T
    index: int = 0  # first test-set sample
    count: int = 1  # number of consecutive samples from `index`
    dataset: str | None = None  # model sources: data set to draw from (default: the model's own)
    out: str = "figures"  # directory of the PNGs
    prompt: str | None = None  # language models: the text whose next token is shown

    def validate(self) -> None:
        if not self.temperatures:
            raise UsageError("--temperatures needs at least one value")
        bad = [t for t in self.temperatures if not t > 0]
        if bad:
            raise UsageError(f"--temperatures must all be > 0, got {', '.join(f'{t:g}' for t in bad)}")
        if self.count < 1:
            raise UsageError(f"--count must be >= 1, got {self.count}")


def _test_logits(cfg: TemperatureViewConfig, store: Store, device: torch.device):
    """(artifact, data, a function index range -> (n, K) logits) for a model or logits source."""
    artifact = store.get(cfg.source)
    if artifact.kind == "logits":
        if cfg.dataset:
            raise UsageError("--dataset applies to model sources; a logits table belongs to the data it was cached on")
        data = data_of(artifact.manifest)
        check_logits_fit(artifact, data)
        table = artifact.tensor("test")
        return artifact, data, lambda lo, hi: table[lo:hi].float()
    if artifact.kind != "model":
        raise UsageError(f"{cfg.source!r} is a {artifact.kind} artifact; give a model or a logits artifact")
    model, artifact = load_model(store, cfg.source)
    data = data_of(artifact.manifest, cfg.dataset)
    check_fits(artifact, data, "model")
    model = model.to(device)
    return artifact, data, lambda lo, hi: predict(model, data, data.x_test[lo:hi], 512, device)


def next_token_view(cfg: TemperatureViewConfig, store: Store, device: torch.device) -> dict:
    """A language model's next-token distribution after `cfg.prompt`, softmax(z/T) over its whole
    vocabulary at every T: the TOP_TOKENS most likely tokens (at T = 1) as bars, and the entropy."""
    if cfg.dataset:
        raise UsageError("--dataset applies to image models; a language model reads its own corpus's tokenizer")
    model, artifact, data = language_model(store, cfg.source, device)
    ids = prompt_ids(data, cfg.prompt)[-data.context:]
    with torch.no_grad():
        z = model(torch.tensor([ids], device=device))[0, -1].float().cpu()
    tokenizer = data.text_tokenizer()
    top = z.topk(min(TOP_TOKENS, len(z))).indices.tolist()
    names = [repr(tokenizer.decode([token])) for token in top]
    probabilities = [stats.softmax(z, t)[top].tolist() for t in cfg.temperatures]
    out = Path(cfg.out) / f"next_token_{artifact.id[:8]}.png"
    plots.token_bars(probabilities, names, cfg.temperatures, out, title=f"after {cfg.prompt!r}")
    sample = {"index": 0, "prompt": cfg.prompt, "true_class": None, "predicted": 0, "tokens": top,
              "probabilities": probabilities, "entropy": stats.softmax_entropy(z, cfg.temperatures),
              "figure": str(out)}
    result = {"source": artifact.id, "source_kind": "model", "dataset": data.name, "class_names": names,
              "temperatures": list(cfg.temperatures), "samples": [sample]}
    report = record_report(store, "visualize-temperature", result, [out], {"source": artifact.id})
    return {"id": report.id, **result}


def temperature_view(cfg: TemperatureViewConfig, store: Store, device: torch.device = torch.device("cpu")) -> dict:
    """softmax(z/T) of test samples `index..index+count-1`: one PNG per sample, and the numbers; for a
    language model, its next-token distribution after --prompt (next_token_view)."""
    cfg.validate()
    if store.get(cfg.source).manifest.get("data", {}).get("task") == "lm":
        if store.get(cfg.source).kind != "model":
            raise UsageError("a text logits table holds training windows only; give the teacher model and --prompt")
        return next_token_view(cfg, store, device)
    if cfg.prompt is not None:
        raise UsageError("--prompt applies to language models; an image source shows test samples (--index)")
    artifact, data, logits_of = _test_logits(cfg, store, device)
    if data.task != "classification":
        raise UsageError(f"visualize-temperature needs a classifier; {data.name} is a {data.task} data set")
    n = len(data.y_test)
    if not 0 <= cfg.index or cfg.index + cfg.count > n:
        raise UsageError(f"--index {cfg.index} with --count {cfg.count} is out of range: the test set of "
                         f"{data.name} has {n} samples (0..{n - 1})")
    logits = logits_of(cfg.index, cfg.index + cfg.count)
    names = data.class_names or [str(k) for k in range(logits.shape[1])]
    samples, figures = [], []
    for offset, z in enumerate(logits):
        index = cfg.index + offset
        true_class = int(data.y_test[index])
        out = Path(cfg.out) / f"temperature_{artifact.id[:8]}_{index}.png"
        plots.temperature_bars(z, cfg.temperatures, true_class, names, out)
        figures.append(out)
        samples.append({"index": index, "true_class": true_class, "predicted": int(z.argmax()),
                        "probabilities": [stats.softmax(z, t).tolist() for t in cfg.temperatures],
                        "entropy": stats.softmax_entropy(z, cfg.temperatures), "figure": str(out)})
    result = {"source": artifact.id, "source_kind": artifact.kind, "dataset": data.name, "class_names": names,
              "temperatures": list(cfg.temperatures), "samples": samples}
    report = record_report(store, "visualize-temperature", result, figures, {"source": artifact.id})
    return {"id": report.id, **result}


def training_curves(runs: dict[str, Artifact], out: Path, store: Store) -> dict:
    """Train/validation loss and metric per epoch of each run (label -> model artifact), as one PNG."""
    missing = [label for label, run in runs.items() if not run.manifest.get("history")]
    if missing:
        raise UsageError(f"no training history in {', '.join(missing)} (only trained model artifacts have one)")
    plots.training_curves({label: run.manifest["history"] for label, run in runs.items()}, out)
    result = {"out": str(out), "runs": {label: run.id for label, run in runs.items()}}
    report = record_report(store, "training-curves", result, [out], {"runs": [run.id for run in runs.values()]})
    return {"id": report.id, **result}


def synthetic_grid(store: Store, ref: str, out: Path, per_class: int) -> dict:
    """A synthesize artifact's inputs as a grid, one row per class the teacher gives them (kdcli plot synthetic)."""
    if per_class < 1:
        raise UsageError(f"--per-class must be >= 1, got {per_class}")
    artifact = store.get(ref, kind="data")
    manifest = artifact.manifest
    if manifest.get("stage") != "synthesize":
        raise UsageError(f"data artifact {artifact.id[:12]} is not the output of synthesize")
    images = (artifact.tensor("x_pool") * manifest["normalization"]["scale"]).clamp(0, 1).numpy()
    plots.image_grid(images, artifact.tensor("y_pool").numpy(), manifest["class_names"], per_class, out,
                     f"{manifest['method']} inputs from teacher {manifest['parents']['teacher'][:12]}, by the "
                     "teacher's class (count)")
    result = {"out": str(out), "synthetic": artifact.id}
    report = record_report(store, "synthetic-grid", result, [out], {"data": artifact.id}, {"per_class": per_class})
    return {"id": report.id, **result}
