"""Multi-stage recipes: whole experiments that call the stage functions in-process and write a report.

    python -m kdcli.recipes.seed001    seed 001's regression study over 5 seeds (make seed001-regression)

Every stage of a recipe is an ordinary cached stage, so a rerun reuses what already ran and the
artifacts are the same ones `kdcli train-teacher / baseline / distill` would produce.
"""
