"""Lineage: the DAG from the data to an artifact, and the `kdcli` command lines that rebuild it.

Every artifact's manifest records its stage, its resolved config and its parents (artifact ids, the
data fingerprint, a weights-file hash), so the graph and the commands are derived from the store
alone. A command passes the options that differ from the stage's defaults; a parent artifact is
referred to by its id (12 hex digits). A rebuilt artifact has the id of the original (refs as
typed stay out of the content id), so the commands resolve their parents both in the store they came
from and, run in order, in a fresh store. They name nothing: a name of 8 or more hex digits would
hide the id it spells. A compare report gets its `kdcli compare` line, each group by its runs' ids;
artifacts of other stages (sweeps, plots) appear without a command.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import typing
from dataclasses import dataclass, field

from kdcli import config as config_mod
from kdcli.stages.registry import STAGES
from kdcli.store import Store

# config fields that name a parent artifact -> the parent's role in the manifest
REF_FIELDS = {"teacher": "teacher", "logits": "logits", "model": "model"}
SHORT = 12
FORMATS = ("tree", "mermaid", "dot")


@dataclass
class Node:
    """One vertex: an artifact (kind model, logits, export, ...), the data, or a weights file."""

    id: str
    kind: str
    stage: str = ""
    config: dict = field(default_factory=dict)
    summary: str = ""
    command: str | None = None
    parents: list[tuple[str, str]] = field(default_factory=list)  # (role, node id)

    @property
    def title(self) -> str:
        if self.kind == "data":
            return f"data {self.summary} (fingerprint {self.id[:SHORT]})"
        if self.kind == "file":
            return f"weights (sha256 {self.id[:SHORT]})"
        return f"{self.stage or self.kind} {self.id[:SHORT]} ({self.kind}{', ' + self.summary if self.summary else ''})"


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _token(value) -> str:
    """A value as the CLI reads it back: floats to 12 significant digits, no trailing noise."""
    return format(value, ".12g") if isinstance(value, float) else str(value)


def _flag_tokens(f: dataclasses.Field, tp, value) -> list[str]:
    """The CLI tokens that set field `f` to `value` (the rules of kdcli.cli.common.stage_command)."""
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    base, _ = config_mod._unwrap_optional(tp)
    if base is bool:
        return [flag if value else f"--no-{flag[2:]}"]
    if typing.get_origin(base) is list:
        if typing.get_args(base) in ((str,), ()):
            return [token for item in value for token in (flag, str(item))]
        return [flag, ",".join(_token(v) for v in value)]
    return [flag, _token(value)]


def stage_config(stage: str):
    """The config class of a registered stage, or None (sweeps, reports, ...)."""
    return STAGES.get(stage).config if stage in STAGES else None


def compare_command(config: dict, parents: dict) -> str | None:
    """`kdcli compare` of a report: each group as its runs' ids, every option spelled out (the manifest
    keeps the labels' order, and so which group is the baseline, only in `labels`). None for a report
    stored before compare recorded its options."""
    labels = config.get("labels")
    if not labels:
        return None
    tokens = ["compare", *(",".join(run[:SHORT] for run in parents[label]) for label in labels)]
    for label in labels:
        tokens += ["--label", label]
    tokens += ["--metric", config["metric"], "--baseline", config["baseline"],
               "--alternative", config["alternative"], "--level", _token(float(config["alpha"]))]
    if config.get("reference"):
        tokens += ["--reference", config["reference"][:SHORT]]
    return "kdcli " + shlex.join(tokens)


def command_line(stage: str, config: dict, parents: dict, artifact_id: str, trust_code: bool = False) -> str | None:
    """`kdcli STAGE --option value ...` for a stage run or a compare report, parents by id; None for
    other stages. `trust_code`: a parent model runs stored py: code, so the line carries --trust-code."""
    if stage == "compare":
        return compare_command(config, parents)
    cls = stage_config(stage)
    if cls is None:
        return None
    config = dict(config)
    for name, role in REF_FIELDS.items():
        if config.get(name) and isinstance(parents.get(role), str):
            config[name] = parents[role][:SHORT]
    if config.get("extra_teachers"):
        config["extra_teachers"] = [
            (parents.get(f"logits_{n}") or parents.get(f"teacher_{n}") or ref)[:SHORT]
            for n, ref in enumerate(config["extra_teachers"], 2)]
    types_ = config_mod.field_types(cls)
    tokens = [stage]
    for f in dataclasses.fields(cls):
        if f.name in config and config[f.name] is not None and config[f.name] != _default(f):
            tokens += _flag_tokens(f, types_[f.name], config[f.name])
    return "kdcli " + shlex.join(tokens + (["--trust-code"] if trust_code else []))


def _summary(manifest: dict) -> str:
    metrics = manifest.get("metrics") or {}
    name = (manifest.get("model") or {}).get("name", "")
    parts = [name] if name and manifest.get("kind") == "model" else []
    parts += [f"{k} {metrics[k]:.4g}" for k in ("test_bpb", "test_acc", "test_mse") if isinstance(metrics.get(k), (int, float))]
    return ", ".join(parts)


def _rebuilds_code(store: Store, parents: dict) -> bool:
    """Whether a parent is a model artifact holding py: code (its rebuild needs --trust-code)."""
    ids = [p for value in parents.values() for p in (value if isinstance(value, list) else [value])
           if isinstance(p, str) and store.object_path(p).is_file()]
    return any((store.read_manifest(p).get("model") or {}).get("code") for p in ids)


def lineage(store: Store, ref: str) -> tuple[str, dict[str, Node]]:
    """(root id, every node by id) for the artifact `ref` and all its ancestors."""
    root = store.resolve(ref)
    nodes: dict[str, Node] = {}
    pending = [root]
    while pending:
        current = pending.pop()
        if current in nodes:
            continue
        artifact = store.get(current)
        manifest = artifact.manifest
        parents = manifest.get("parents") or {}
        node = Node(current, manifest.get("kind", "?"), manifest.get("stage", ""), manifest.get("config") or {},
                    _summary(manifest), command_line(manifest.get("stage", ""), manifest.get("config") or {},
                                                     parents, current, _rebuilds_code(store, parents)))
        for role, value in parents.items():
            for parent in value if isinstance(value, list) else [value]:
                if not isinstance(parent, str):
                    continue
                if store.object_path(parent).is_file():
                    node.parents.append((role, parent))
                    pending.append(parent)
                else:  # the data fingerprint, or the hash of a weights file: leaves outside the store
                    kind = "data" if role == "data" else "file"
                    summary = (manifest.get("data") or {}).get("name", "") if kind == "data" else ""
                    nodes.setdefault(parent, Node(parent, kind, summary=summary))
                    node.parents.append((role, parent))
        nodes[current] = node
    return root, nodes


def build_order(root: str, nodes: dict[str, Node]) -> list[str]:
    """Node ids with every parent before its children (a depth-first post-order from `root`)."""
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order:
            return
        for _, parent in nodes[node_id].parents:
            visit(parent)
        order.append(node_id)

    visit(root)
    return order


def commands(root: str, nodes: dict[str, Node]) -> list[str]:
    """The command lines that rebuild `root`, parents first."""
    return [nodes[i].command for i in build_order(root, nodes) if nodes[i].command]


def _config_line(config: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(config.items()))


def render_tree(root: str, nodes: dict[str, Node]) -> str:
    """The artifact at the top, its parents indented beneath it; each stage with its command and config."""
    lines: list[str] = []
    shown: set[str] = set()

    def walk(node_id: str, prefix: str, role: str, last: bool, top: bool) -> None:
        node = nodes[node_id]
        branch = "" if top else ("└── " if last else "├── ")
        lines.append(f"{prefix}{branch}{role + ': ' if role else ''}{node.title}")
        inner = prefix + ("" if top else ("    " if last else "│   "))
        if node_id in shown and node.parents:
            lines.append(f"{inner}    (ancestors shown above)")
            return
        shown.add(node_id)
        if node.command:
            lines.append(f"{inner}│ $ {node.command}")
        if node.config:
            lines.append(f"{inner}│ config: {_config_line(node.config)}")
        for i, (parent_role, parent) in enumerate(node.parents):
            walk(parent, inner, parent_role, i == len(node.parents) - 1, False)

    walk(root, "", "", True, True)
    lines.append("")
    lines.append("rebuild, in order:")
    lines += [f"  {line}" for line in commands(root, nodes)]
    return "\n".join(lines)


def render_mermaid(root: str, nodes: dict[str, Node]) -> str:
    lines = ["graph TD"]
    for node_id in build_order(root, nodes):
        label = nodes[node_id].title.replace('"', "'")
        lines.append(f'  n{node_id[:SHORT]}["{label}"]')
        lines += [f"  n{parent[:SHORT]} -->|{role}| n{node_id[:SHORT]}" for role, parent in nodes[node_id].parents]
    return "\n".join(lines)


def render_dot(root: str, nodes: dict[str, Node]) -> str:
    lines = ["digraph lineage {", "  rankdir=TB;", "  node [shape=box];"]
    for node_id in build_order(root, nodes):
        label = json.dumps(nodes[node_id].title)
        lines.append(f"  n{node_id[:SHORT]} [label={label}];")
        lines += [f'  n{parent[:SHORT]} -> n{node_id[:SHORT]} [label="{role}"];'
                  for role, parent in nodes[node_id].parents]
    lines.append("}")
    return "\n".join(lines)


RENDERERS = {"tree": render_tree, "mermaid": render_mermaid, "dot": render_dot}
