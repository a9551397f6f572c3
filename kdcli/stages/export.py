"""export: a model artifact becomes an ONNX or TorchScript file whose outputs are checked against PyTorch's.

Parity is measured on the model's own data set's test split (reloaded from its manifest): the largest
absolute logit difference between the exported runtime (a real onnxruntime InferenceSession, or the
loaded TorchScript module) and PyTorch, and the share of test images on which both pick the same class.
An export outside the tolerances is an error, never a file. Measured besides, for the model and for
an optional `--teacher`: parameters, file size, CPU latency per batch of 1 and 64 for PyTorch and the
runtime, and the exported model's test accuracy. `--int8` adds onnxruntime's post-training int8
quantization (`--int8-mode dynamic`, or `static` calibrated on training inputs), refused when it costs
more than `--max-drop` points of test accuracy.

The exported bytes are stored as a uint8 tensor in an "export" artifact (the model as parent), so an
export is content-addressed, verified on read and cached: an unchanged export is not redone. The files
reach `--out` only after every check passed, each through a temporary file and a rename.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdcli.data import DataSet
from kdcli.engine import IGNORE, predict, test_metrics
from kdcli.errors import KdcliError, UsageError
from kdcli.models import parameter_count
from kdcli.models.quantize import fold_int8_weights, frozen, is_quantized, output_step
from kdcli.stages.common import RunContext, StageResult, data_of, load_model
from kdcli.stages.configs import EXPORT_FORMATS, ExportConfig
from kdcli.stages.registry import EXPORT
from kdcli.stages.runner import run_cached

INPUT, OUTPUT = "input", "logits"
Runtime = Callable[[torch.Tensor], torch.Tensor]  # prepared inputs (N, ...) float32 -> outputs (N, K)


@dataclass
class ExportResult(StageResult):
    """The model's export; `teacher` is the teacher's, when one was given."""

    teacher: StageResult | None = None


def cpu_latency_ms(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `run()` over `repeats` calls after one warm-up call, in milliseconds."""
    run()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 4)


def onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    """The model traced to ONNX with a dynamic batch axis (TorchScript-based exporter: fast, no Dynamo)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return buffer.getvalue()


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), buffer)
    return buffer.getvalue()


def onnx_runtime(blob: bytes, optimized: bool = True) -> Runtime:
    """A CPU onnxruntime InferenceSession on `blob`, with as many threads as torch uses; `optimized=False`
    runs the graph node by node as written (no fusion into int8 kernels)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not optimized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        raise KdcliError(f"onnxruntime cannot load the export: {str(exc).splitlines()[0]}") from None
    return lambda x: torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])


def torchscript_runtime(blob: bytes) -> Runtime:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def int8_bytes(blob: bytes, mode: str = "dynamic", calibration: torch.Tensor | None = None) -> bytes:
    """Post-training int8 by onnxruntime.quantization: `dynamic` (quantize_dynamic: int8 weights,
    activations quantized on the fly) or `static` (quantize_static, QDQ: int8 weights per tensor,
    symmetric; uint8 activations at the min-max ranges of `calibration`, prepared inputs (N, ...))."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.split(64))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch.numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        source.write_bytes(blob)
        logging.disable(logging.WARNING)  # its advice to pre-process the model first, on the root logger
        try:
            if mode == "static":
                quantize_static(source, target, Batches(), quant_format=QuantFormat.QDQ, per_channel=False,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax)
            else:
                quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        return target.read_bytes()


def run_batched(runtime: Runtime, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([runtime(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


def parity(reference: torch.Tensor, exported: torch.Tensor, classification: bool) -> dict:
    """max |difference| of the outputs (N, K), and the % of rows with the same argmax (classification)."""
    diff = float((reference - exported).abs().max()) if reference.numel() else 0.0
    agree = 100.0 * float((reference.argmax(1) == exported.argmax(1)).float().mean()) if classification else None
    return {"max_abs_diff": diff, "agreement": agree, "n": len(reference)}


def _latency_batches(x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Batches of 1 and 64 test inputs (the test split repeated if it is smaller)."""
    repeated = x.repeat((64 // len(x) + 1,) + (1,) * (x.dim() - 1))
    return {1: x[:1].contiguous(), 64: repeated[:64].contiguous()}


def _latencies(runtime: Runtime, x: torch.Tensor, cfg: ExportConfig, prefix: str) -> dict[str, float]:
    """{PREFIX_b1, PREFIX_b64: CPU latency in ms} of `runtime` on test inputs."""
    return {f"{prefix}_b{batch}": cpu_latency_ms(lambda inputs=inputs: runtime(inputs), cfg.latency_repeats)
            for batch, inputs in _latency_batches(x).items()}


def _measure(runtime: Runtime, data: DataSet, x: torch.Tensor, cfg: ExportConfig,
             prefix: str) -> tuple[torch.Tensor, dict, dict]:
    """(outputs on the test split, test metrics, latencies)."""
    outputs = run_batched(runtime, x, cfg.eval_batch_size)
    return outputs, test_metrics(data.task, outputs, data.y_test), _latencies(runtime, x, cfg, prefix)


def transformers_bits_per_byte(directory: str, data: DataSet, batch_size: int) -> dict:
    """Test bits per byte of the model saved in `directory`, recomputed through transformers alone
    (AutoModelForCausalLM on the test windows), and whether its saved tokenizer (AutoTokenizer) encodes
    the test text as the data's own tokenizer does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).float().eval()
    saved = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    nats = 0.0
    with torch.no_grad():
        for start in range(0, len(data.x_test), batch_size):
            logits = lm(input_ids=data.x_test[start:start + batch_size].long()).logits
            targets = data.y_test[start:start + batch_size]
            valid = targets != IGNORE
            nats += float(torch.nn.functional.cross_entropy(logits[valid].float(), targets[valid], reduction="sum"))
    sample = data.text_tokenizer().decode(data.x_test[0].tolist())
    same_ids = saved(sample, add_special_tokens=False)["input_ids"] == data.text_tokenizer()(
        sample, add_special_tokens=False)["input_ids"]
    return {"test_bpb": nats / (math.log(2) * data.split_bytes["test"]), "tokenizer_matches": bool(same_ids), "lm": lm}


def export_hf_one(cfg: ExportConfig, ctx: RunContext, model, artifact, data: DataSet, role: str) -> StageResult:
    """A language model as a Hugging Face directory (save_pretrained of the model and its tokenizer), held
    to the manifest's test bits per byte, recomputed through transformers alone, within --atol."""

    def produce(key: str):
        with tempfile.TemporaryDirectory() as tmp:
            model.lm.save_pretrained(tmp, safe_serialization=True)
            data.text_tokenizer().save_pretrained(tmp)
            check = transformers_bits_per_byte(tmp, data, cfg.eval_batch_size)
            files = {f"hf/{path.relative_to(tmp)}": path.read_bytes() for path in sorted(Path(tmp).rglob("*"))
                     if path.is_file()}
        expected = artifact.manifest["metrics"]["test_bpb"]
        diff = abs(check["test_bpb"] - expected)
        where = f"{role} {artifact.id[:12]}: the hf export"
        if diff > cfg.atol:
            raise KdcliError(f"{where} fails parity: test bits per byte through transformers {check['test_bpb']:.6f}, "
                             f"the manifest's {expected:.6f} (|diff| {diff:.3g} > --atol {cfg.atol:g}); nothing was written")
        if not check["tokenizer_matches"]:
            raise KdcliError(f"{where} fails parity: the saved tokenizer encodes the test text differently; "
                             "nothing was written")
        windows = _latency_batches(data.x_test.long())
        with torch.no_grad():
            latency = {f"pytorch_b{n}": cpu_latency_ms(lambda x=x: check["lm"](input_ids=x), cfg.latency_repeats)
                       for n, x in windows.items()}
        latency["threads"] = torch.get_num_threads()
        metrics = {"params": parameter_count(model), "file_bytes": sum(len(b) for b in files.values()),
                   "test_bpb": check["test_bpb"], "manifest_test_bpb": expected, "parity_bpb_diff": diff,
                   "tokenizer_matches": True}
        ctx.reporter.info(f"export: {role} {artifact.id[:12]} to a Hugging Face directory: test bits per byte "
                          f"{check['test_bpb']:.4f} through transformers (manifest {expected:.4f})")
        tensors = {name: torch.frombuffer(bytearray(blob), dtype=torch.uint8) for name, blob in files.items()}
        return "export", tensors, {"format": "hf", "role": role, "metrics": metrics, "latency": latency,
                                   "data_fingerprint": data.fingerprint, "data": data.describe(),
                                   "model": artifact.manifest["model"]}

    config = dataclasses.replace(cfg, model=artifact.id, teacher=None)
    return run_cached(ctx, EXPORT, config, {"model": artifact.id, "data": data.fingerprint}, produce)


def export_one(cfg: ExportConfig, ctx: RunContext, ref: str, role: str) -> StageResult:
    """Export, check and measure one model artifact; the export artifact is cached by model and options.

    A model trained with fake quantization (--quantize int8) exports as its int8 graph: the fake
    quantization at its learned scales as QuantizeLinear / DequantizeLinear, the weights stored as int8.
    Its parity is against the fake-quantized PyTorch model: the graph run node by node must match it
    within --atol; the session that is timed and measured fuses the graph into int8 kernels, whose
    integer requantization moves some outputs by a step or two, so it must agree on the argmax
    (--min-agreement), and its max |difference| is recorded."""
    model, artifact = load_model(ctx.store, ref)
    data = data_of(artifact.manifest, store=ctx.store)
    if (data.task == "lm") != (cfg.format == "hf"):
        raise UsageError(f"--format {cfg.format}: language models export as --format hf (a Hugging Face "
                         "directory); image and table models as onnx or torchscript")
    if cfg.format == "hf":
        return export_hf_one(cfg, ctx, model, artifact, data, role)
    qat = is_quantized(artifact.manifest["model"])
    if qat:
        if cfg.format != "onnx" or not cfg.int8:
            raise UsageError(f"{role} {artifact.id[:12]} was trained with fake quantization (--quantize int8): its "
                             "export is an int8 ONNX graph; use --format onnx --int8")
        if cfg.int8_mode != "dynamic":
            raise UsageError(f"{role} {artifact.id[:12]} was trained with fake quantization: its int8 graph is "
                             f"the one it learned, not a post-training --int8-mode {cfg.int8_mode}; drop --int8-mode")
        model = frozen(model)
    cpu = torch.device("cpu")

    def produce(key: str):
        classification = data.task == "classification"
        x = data.prepare(data.x_test)
        reference = predict(model, data, data.x_test, cfg.eval_batch_size, cpu)
        with torch.no_grad():
            latency = _latencies(model, x, cfg, "pytorch")
        blob = onnx_bytes(model, x[:1], cfg.opset) if cfg.format == "onnx" else torchscript_bytes(model, x[:1])
        if qat:
            blob = fold_int8_weights(blob)
        runtime = onnx_runtime(blob) if cfg.format == "onnx" else torchscript_runtime(blob)
        outputs, measured, runtime_latency = _measure(runtime, data, x, cfg, "runtime")
        latency.update(runtime_latency, threads=torch.get_num_threads())
        check = parity(reference, outputs, classification)
        where = f"{role} {artifact.id[:12]}: the {cfg.format} export"
        exact = parity(reference, run_batched(onnx_runtime(blob, optimized=False), x, cfg.eval_batch_size),
                       classification) if qat else check
        if exact["max_abs_diff"] > cfg.atol:
            raise KdcliError(f"{where} fails parity on {check['n']} test inputs: max |output difference| "
                             f"{exact['max_abs_diff']:.3g} > --atol {cfg.atol:g}"
                             f"{' (the graph run node by node)' if qat else ''}; nothing was written")
        if classification and check["agreement"] < cfg.min_agreement:
            raise KdcliError(f"{where} fails parity: argmax agreement {check['agreement']:.2f}% < "
                             f"--min-agreement {cfg.min_agreement:g}%; nothing was written")
        metrics = {"params": parameter_count(model), "file_bytes": len(blob),
                   **{f"pytorch_{k}": v for k, v in test_metrics(data.task, reference, data.y_test).items()},
                   **measured, **{f"parity_{k}": v for k, v in check.items()}}
        if qat:  # the int8 kernels' max |difference| in steps of the output quantizer, and the exact graph's
            metrics.update(parity_unfused_max_abs_diff=exact["max_abs_diff"],
                           parity_output_steps=check["max_abs_diff"] / output_step(model))
        tensors = {"export": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}
        if cfg.int8 and not qat:
            calibration = data.prepare(data.x_pool[data.train_idx[:cfg.calibration_samples]])
            quantized = int8_bytes(blob, cfg.int8_mode, calibration)
            _, measured8, latency8 = _measure(onnx_runtime(quantized), data, x, cfg, "int8")
            latency.update(latency8)
            metric = "test_acc" if classification else "test_mse"
            change = measured8[metric] - measured[metric]
            drop = -change if classification else change
            if drop > cfg.max_drop:
                raise KdcliError(f"{role} {artifact.id[:12]}: int8 quantization changes test {metric} by "
                                 f"{change:+.2f} (from {measured[metric]:.2f} to {measured8[metric]:.2f}), more "
                                 f"than --max-drop {cfg.max_drop:g}; nothing was written")
            metrics.update({f"int8_{k}": v for k, v in measured8.items()})
            metrics.update({"int8_file_bytes": len(quantized), f"int8_{metric}_change": change})
            tensors["export_int8"] = torch.frombuffer(bytearray(quantized), dtype=torch.uint8)
        ctx.reporter.info(f"export: {role} {artifact.id[:12]} to {cfg.format}: parity max |diff| "
                          f"{check['max_abs_diff']:.2g}" + (f", agreement {check['agreement']:.2f}%" if classification
                                                            else ""))
        # latency: wall-clock figures, kept beside the content (the store's volatile fields)
        return "export", tensors, {"format": cfg.format, "role": role, "metrics": metrics, "latency": latency,
                                   "quantize": "int8" if qat else "none",
                                   **({"int8_mode": cfg.int8_mode} if cfg.int8 and not qat else {}),
                                   "data_fingerprint": data.fingerprint, "data": data.describe(),
                                   "model": artifact.manifest["model"]}

    config = dataclasses.replace(cfg, model=ref, teacher=None)
    return run_cached(ctx, EXPORT, config, {"model": artifact.id, "data": data.fingerprint}, produce)


def file_names(result: StageResult) -> dict[str, str]:
    """Tensor name -> file name in --out: ROLE.onnx / ROLE.int8.onnx / ROLE.pt; a Hugging Face directory's
    files go to --out itself (the student) or --out/teacher."""
    manifest = result.artifact.manifest
    if manifest["format"] == "hf":
        folder = "" if manifest["role"] == "student" else f"{manifest['role']}/"
        return {name: folder + name.removeprefix("hf/") for name in result.artifact.tensor_names()}
    suffix = EXPORT_FORMATS[manifest["format"]]
    names = {"export": f"{manifest['role']}{'.int8' if manifest.get('quantize') == 'int8' else ''}{suffix}"}
    if "export_int8" in result.artifact.tensor_names():
        names["export_int8"] = f"{manifest['role']}.int8{suffix}"
    return names


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an exported model is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_exports(out: Path, results: list[StageResult]) -> list[Path]:
    """Every export's files and export.json (id, role, format, metrics per file) into `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        written, summary = [], []
        for result in results:
            names = file_names(result)
            for tensor, name in names.items():
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(out / name, result.artifact.tensor(tensor).numpy().tobytes())
                written.append(out / name)
            summary.append({"id": result.id, "role": result.artifact.manifest["role"],
                            "format": result.artifact.manifest["format"], "files": list(names.values()),
                            "metrics": result.metrics})
        _write_atomic(out / "export.json", json.dumps(summary, indent=2).encode())
    except OSError as exc:
        raise KdcliError(f"could not write to --out {out}: {exc.strerror or exc}") from None
    return [*written, out / "export.json"]


def export(cfg: ExportConfig, ctx: RunContext) -> ExportResult:
    """Export the model (and the teacher), check parity, store the exports, then write --out."""
    teacher = None
    if cfg.teacher:  # never named or tagged: --name and --tag are the model's export's
        teacher = export_one(cfg, dataclasses.replace(ctx, name=None, tags=[]), cfg.teacher, "teacher")
    student = export_one(cfg, ctx, cfg.model, "student")
    files = write_exports(Path(cfg.out), [student] + ([teacher] if teacher else []))
    ctx.reporter.info(f"export: wrote {', '.join(str(f) for f in files)}")
    return ExportResult(student.artifact, student.skipped, teacher)

