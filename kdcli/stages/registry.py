"""The stage registry: every stage kdcli runs, once. The CLI generates a command per entry, `sweep`
runs any entry over a grid, and recipes run entries and ask them for their cache keys.

A new stage is one `STAGES.register(stage.name)(stage)` of a kdcli.stages.runner.Stage: it is then
a command (`kdcli NAME`) and sweepable (`kdcli sweep NAME`) with no other edit.
"""

from __future__ import annotations

from kdcli.registry import Registry
from kdcli.stages.cache_logits import CACHE_LOGITS
from kdcli.stages.export import EXPORT
from kdcli.stages.import_teacher import IMPORT_TEACHER
from kdcli.stages.runner import Stage
from kdcli.stages.train import BASELINE, DISTILL, TRAIN_TEACHER

STAGES: Registry[Stage] = Registry("stage")

for _stage in (TRAIN_TEACHER, CACHE_LOGITS, BASELINE, DISTILL, IMPORT_TEACHER, EXPORT):
    STAGES.register(_stage.name)(_stage)


def made_by_other_code(manifest: dict) -> bool:
    """True for a run of a registered stage whose code fingerprint is not this code's (or that has none:
    made before fingerprints were recorded); other artifacts (reports, imports of other tools) are not runs."""
    stage = manifest.get("stage")
    if stage not in STAGES:
        return False
    return manifest.get("code_fingerprint") != STAGES.get(stage).code_fingerprint()
