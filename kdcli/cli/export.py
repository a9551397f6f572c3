"""`kdcli export MODEL --format onnx|torchscript|hf --out DIR`: the export table (kdcli.stages.export)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from kdcli.reporting import Reporter

if TYPE_CHECKING:
    from kdcli.stages.export import ExportResult

COLUMNS = ("model", "runtime", "params", "file", "ms/batch 1", "ms/batch 64", "test", "max |diff|", "agree")


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB"):
        if num_bytes < 1024 or unit == "MB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""


def _metric(m: dict, prefix: str) -> str:
    if f"{prefix}test_acc" in m:
        return f"{m[f'{prefix}test_acc']:.2f}%"
    return f"mse {m[f'{prefix}test_mse']:.4g}"


def hf_rows(result) -> list[list[str]]:
    """A Hugging Face directory: transformers' test bits per byte against the manifest's."""
    manifest = result.artifact.manifest
    m, ms = manifest["metrics"], manifest["latency"]
    return [[manifest["role"], "transformers", f"{m['params']:,}", _size(m["file_bytes"]), f"{ms['pytorch_b1']:.3f}",
             f"{ms['pytorch_b64']:.3f}", f"bpb {m['test_bpb']:.4f} (manifest {m['manifest_test_bpb']:.4f})",
             f"{m['parity_bpb_diff']:.2g}", "tokenizer same"]]


def export_rows(result) -> list[list[str]]:
    """PyTorch, the exported runtime and (with --int8) the quantized model, for one export artifact."""
    manifest = result.artifact.manifest
    m, ms, role, fmt = manifest["metrics"], manifest["latency"], manifest["role"], manifest["format"]
    if fmt == "hf":
        return hf_rows(result)
    agree = m.get("parity_agreement")
    runtime = "onnxruntime" if fmt == "onnx" else "torchscript"
    quantized = manifest.get("quantize") == "int8"  # a QAT model: fake-quantized in PyTorch, int8 in the runtime
    rows = [[role, "pytorch fake-quant" if quantized else "pytorch", f"{m['params']:,}", "", f"{ms['pytorch_b1']:.3f}", f"{ms['pytorch_b64']:.3f}",
             _metric(m, "pytorch_"), "", ""],
            [role, f"{runtime} int8" if quantized else runtime, f"{m['params']:,}", _size(m["file_bytes"]), f"{ms['runtime_b1']:.3f}",
             f"{ms['runtime_b64']:.3f}", _metric(m, ""), f"{m['parity_max_abs_diff']:.2g}",
             "" if agree is None else f"{agree:.2f}%"]]
    if "int8_file_bytes" in m:
        change = next(v for k, v in m.items() if k.startswith("int8_") and k.endswith("_change"))
        mode = manifest.get("int8_mode", "dynamic")
        rows.append([role, f"{runtime} int8 {mode}", f"{m['params']:,}", _size(m["int8_file_bytes"]),
                     f"{ms['int8_b1']:.3f}", f"{ms['int8_b64']:.3f}", f"{_metric(m, 'int8_')} ({change:+.2f})",
                     "", ""])
    return rows


def show(result: ExportResult) -> None:
    threads = result.artifact.manifest["latency"].get("threads")
    table = Table(title=f"export {result.id[:12]}: test split, CPU latency (median, {threads} thread(s))")
    for column in COLUMNS:
        table.add_column(column)
    for part in [result] + ([result.teacher] if result.teacher else []):
        for row in export_rows(part):
            table.add_row(*row)
    Reporter().console.print(table)  # off a terminal at the table's own width (kdcli.reporting.stderr_console)
