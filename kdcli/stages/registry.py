"""The stage registry: every stage kdcli runs, once. The CLI generates a command per entry, `sweep`
runs any entry over a grid, and recipes run entries and ask them for their cache keys.

A new stage is one `STAGES.register(stage.name)(stage)` of a kdcli.stages.stage.Stage: it is then
a command (`kdcli NAME`) and sweepable (`kdcli sweep NAME`) with no other edit. The stages below name
their run functions by dotted path, so the registry (and `kdcli --help`) loads none of their modules.
"""

from __future__ import annotations

from kdcli.registry import Registry
from kdcli.stages.configs import (
    BaselineConfig,
    CacheLogitsConfig,
    DistillConfig,
    ExportConfig,
    ImportConfig,
    SequenceKDConfig,
    SynthesizeConfig,
    TeacherConfig,
)
from kdcli.stages.stage import TRAINING_NUMERICS, Stage

TRAIN_NUMERICS = (*TRAINING_NUMERICS, "kdcli.stages.train", "kdcli.stages.planners", "kdcli.stages.objectives",
                  "kdcli.stages.teachers")

TRAIN_TEACHER = Stage("train-teacher", TeacherConfig, "kdcli.stages.train:train_teacher",
                      "Train a teacher with cross-entropy (MSE for regression) and early stopping.", TRAIN_NUMERICS)
CACHE_LOGITS = Stage("cache-logits", CacheLogitsConfig, "kdcli.stages.cache_logits:cache_logits",
                     "Store the teacher's logits for every training image (and view) as a logits artifact.",
                     ("kdcli.engine", "kdcli.augment", "kdcli.models", "kdcli.data", "kdcli.stages.cache_logits",
                      "kdcli.stages.common"), positional="teacher", sweepable=False)
BASELINE = Stage("baseline", BaselineConfig, "kdcli.stages.train:baseline",
                 "Train the student from scratch on the labels alone.", TRAIN_NUMERICS)
DISTILL = Stage("distill", DistillConfig, "kdcli.stages.train:distill",
                "Train the student on the teacher's soft targets (online teacher or cached logits).", TRAIN_NUMERICS,
                removed={"--logit-standardize": "--logit-standardize is gone: use --method kd-ls (or dkd-ls)"})
IMPORT_TEACHER = Stage("import-teacher", ImportConfig, "kdcli.stages.import_teacher:import_teacher",
                       "Import a pretrained teacher (hf:, timm:, torchvision:, torchhub:, or a checkpoint file) "
                       "and report its test accuracy.",
                       ("kdcli.engine", "kdcli.models", "kdcli.data", "kdcli.stages.import_teacher",
                        "kdcli.stages.common"), positional="source")
EXPORT = Stage("export", ExportConfig, "kdcli.stages.export:export",
               "Export a model to ONNX or TorchScript, check parity against PyTorch on the test split, "
               "and measure size, CPU latency and accuracy (with --teacher, the teacher's too).",
               ("kdcli.stages.export", "kdcli.engine", "kdcli.models", "kdcli.data"), positional="model", sweepable=False)

SYNTHESIZE = Stage("synthesize", SynthesizeConfig, "kdcli.stages.synthesize:synthesize",
                   "Invert a teacher into synthetic inputs (data-free distillation: DeepInversion, ADI, seed 004's "
                   "entropy-tv, or noise) and store them as a data set for distill --dataset synthetic:REF.",
                   ("kdcli.stages.synthesize", "kdcli.losses.inversion", "kdcli.models", "kdcli.engine",
                    "kdcli.stages.common", "kdcli.stages.visualize"), positional="teacher", sweepable=False)

SEQUENCE_KD = Stage("sequence-kd", SequenceKDConfig, "kdcli.stages.sequence_kd:sequence_kd",
                    "Sample a text teacher's continuations of the training windows into a data set, --dataset "
                    "seqkd:REF, for sequence-level KD (Kim & Rush 2016).",
                    ("kdcli.engine", "kdcli.models", "kdcli.data", "kdcli.stages.sequence_kd", "kdcli.stages.common"),
                    positional="teacher", sweepable=False)

STAGES: Registry[Stage] = Registry("stage")

for _stage in (TRAIN_TEACHER, CACHE_LOGITS, BASELINE, DISTILL, SYNTHESIZE, SEQUENCE_KD, IMPORT_TEACHER, EXPORT):
    STAGES.register(_stage.name)(_stage)


def made_by_other_code(manifest: dict) -> bool:
    """True for a run of a registered stage whose code fingerprint is not this code's (or that has none:
    made before fingerprints were recorded); other artifacts (reports, imports of other tools) are not runs."""
    stage = manifest.get("stage")
    if stage not in STAGES:
        return False
    return manifest.get("code_fingerprint") != STAGES.get(stage).code_fingerprint()
