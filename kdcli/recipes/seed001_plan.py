"""Seed 001's study as data: every model of the report (a Variant) and the jobs (variant x seed)
with their stage config overrides; see kdcli.recipes.seed001 for the protocols."""

from __future__ import annotations

from dataclasses import dataclass

from kdcli.errors import UsageError

DATASET = "synthetic-regression"
TEACHER_EPOCHS, STUDENT_EPOCHS = 700, 600
COMMON = {"dataset": DATASET, "batch_size": 128, "optimizer": "adam", "scheduler": "constant"}
PROTOCOLS = {
    "kdcli": {"val_fraction": 0.1, "split_seed": 0},
    "seed": {"val_fraction": 0.0, "split_seed": 0, "patience": 0},
}
DEFAULT_PATIENCE = 50
REF_PREFIX = {"kdcli": "s001", "seed": "s001-seed-protocol"}  # store names of the models, per protocol
FEATURE_PAIR = "hidden.2:hidden.1"  # expert's 3rd hidden block (128) -> student's 2nd (64), both mid-depth


@dataclass(frozen=True)
class Variant:
    """One row of the report: a model trained once per seed."""

    slug: str
    label: str
    stage: str  # train-teacher | baseline | distill
    config: dict
    teacher: str | None = None  # slug of the teacher variant (distill)
    seed001: tuple | None = None  # seed 001's (mean MSE, std MSE, mean R^2) or None where it has none
    group: str = "main"  # main | grid | extra
    patience_factor: int = 1  # the protocol's early-stopping patience times this (0 stays 0)

    def weights(self) -> str:
        if self.stage != "distill":
            return ""
        c = self.config
        parts = [f"hard {c['w_hard']:g}", f"hp {c['w_hp']:g}"]
        parts += [f"feat {c['w_feat']:g}"] if c.get("w_feat") else []
        parts += [f"gr {c['w_gr']:g}"] if c.get("w_gr") else []
        return " / ".join(parts)


def _student(w_hard: float, w_hp: float, **extra) -> dict:
    return {"model": "seed001-student", "epochs": STUDENT_EPOCHS, "lr": 1e-3, "weight_decay": 0.0,
            "w_hard": w_hard, "w_hp": w_hp, "augment": "none", **extra}


# function matching from the expert teacher at seed 001's best grid weights, hard 0.1 / hp 0.9:
# (slug, --augment). Explored first with a few seeds (see the README); each also runs patiently (twice
# the epochs, three times the patience: these runs often stopped at the epoch limit), and the report
# chooses among these and every other distilled student on mean validation MSE
FUNCTION_MATCHING = [("noise0.3", "noise:0.3"), ("mixup1", "mixup:1.0"), ("uniform", "uniform"),
                     ("uniform1.2", "uniform:1.2")]
PATIENT_EPOCHS, PATIENT_FACTOR = 2 * STUDENT_EPOCHS, 3

VARIANTS: list[Variant] = [
    Variant("teacher", "Teacher", "train-teacher",
            {"model": "seed001-teacher", "epochs": TEACHER_EPOCHS, "lr": 1e-4, "weight_decay": 1e-5},
            seed001=(0.3464, 0.0168, 0.7511)),
    Variant("expert", "Expert teacher", "train-teacher",
            {"model": "seed001-expert", "epochs": TEACHER_EPOCHS, "lr": 1e-4, "weight_decay": 1e-4},
            seed001=(0.2554, 0.0089, 0.8165)),
    Variant("scratch", "Student (scratch)", "baseline",
            {"model": "seed001-student", "epochs": STUDENT_EPOCHS, "lr": 1e-3, "weight_decay": 0.0},
            seed001=(0.4539, 0.0193, 0.6739)),
    Variant("kd-teacher", "Distilled from teacher", "distill", _student(0.3, 0.7), teacher="teacher",
            seed001=(0.4297, 0.0420, 0.6912)),
    Variant("kd-expert", "Distilled from expert", "distill", _student(0.3, 0.7), teacher="expert",
            seed001=(0.3509, 0.0114, 0.7479)),
    *[Variant(f"grid-h{h:g}", f"Grid hard {h:g} / hp {1 - h:.1f}", "distill", _student(h, round(1 - h, 1)),
              teacher="expert", seed001=s, group="grid")
      for h, s in ((0.1, (0.3379, 0.0061, 0.7573)), (0.5, (0.3683, 0.0257, 0.7354)),
                   (0.7, (0.3872, 0.0194, 0.7218)), (0.9, (0.4129, 0.0162, 0.7034)))],
    Variant("gr", "Gradient term L_GR", "distill", _student(0.2, 0.5, w_gr=0.3), teacher="expert",
            seed001=(0.3411, 0.0150, None)),
    Variant("feat", "Feature term L_FEAT", "distill",
            _student(0.3, 0.4, w_feat=0.3, feature_pairs=[FEATURE_PAIR]), teacher="expert", group="extra"),
    Variant("fm-noise", "Function matching noise:0.1", "distill", _student(0.3, 0.7, augment="noise:0.1"),
            teacher="expert", group="extra"),
    Variant("fm-mixup", "Function matching mixup:0.4", "distill", _student(0.3, 0.7, augment="mixup:0.4"),
            teacher="expert", group="extra"),
    *[Variant(f"fm-{slug}", f"Function matching {augment}", "distill", _student(0.1, 0.9, augment=augment),
              teacher="expert", group="fm") for slug, augment in FUNCTION_MATCHING],
    *[Variant(f"fm-{slug}-patient", f"Function matching {augment}, patient", "distill",
              _student(0.1, 0.9, augment=augment, epochs=PATIENT_EPOCHS), teacher="expert", group="fm",
              patience_factor=PATIENT_FACTOR) for slug, augment in FUNCTION_MATCHING],
]
# the grid of seed 001 part 3 (expert teacher, hp = 1 - hard); its hard 0.3 point is "kd-expert"
GRID = [("grid-h0.1", 0.1), ("kd-expert", 0.3), ("grid-h0.5", 0.5), ("grid-h0.7", 0.7), ("grid-h0.9", 0.9)]
SEED001_GRID_H03 = (0.3415, 0.0185, 0.7546)  # the same weights as kd-expert, trained again in part 3
SEED001_P_VS_SCRATCH = {"kd-teacher": "0.0897", "kd-expert": "<0.0001"}
SEED001_P_GR_VS_BEST = 0.5628
# an estimate of each stage's cost, to start the longest first (gradient term: double backward)
COST = {"expert": 10, "teacher": 9, "gr": 8, "fm-noise": 6, "fm-mixup": 6, "feat": 5,
        **{f"fm-{slug}": 7 for slug, _ in FUNCTION_MATCHING},
        **{f"fm-{slug}-patient": 11 for slug, _ in FUNCTION_MATCHING}}


@dataclass
class Job:
    variant: Variant
    seed: int
    overrides: dict
    result: dict | None = None

    @property
    def key(self) -> str:
        return f"{self.variant.slug}-s{self.seed}"



def plan(seeds: list[int], protocol: str, patience: int, quick: dict | None = None) -> list[Job]:
    """Every (variant, seed) job with its config overrides; `quick` overrides epochs etc. (tests)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    settings = {"patience": patience, **PROTOCOLS[protocol]}
    jobs = []
    for seed in seeds:
        for variant in VARIANTS:
            overrides = {**COMMON, **settings, **variant.config, "seed": seed,
                         "patience": settings["patience"] * variant.patience_factor}
            if quick:
                overrides.update({k: v for k, v in quick.items() if k != "epochs"})
                overrides["epochs"] = min(overrides["epochs"], quick.get("epochs", overrides["epochs"]))
            jobs.append(Job(variant, seed, overrides))
    return jobs

