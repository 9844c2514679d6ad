"""The code each artifact's key fingerprints (:mod:`caopd.plan`, DESIGN §4): per stage, the
source files (or directories of ``*.py``) its job runs, and those of the ``compare`` and ``index``
rules, whose outputs sit at fixed paths. Like :mod:`caopd.plan`, imported by the Snakefile: no
imports."""

from __future__ import annotations

#: What every stage job runs around the stage's own code: the job harness (:mod:`caopd.job`,
#: :mod:`caopd.store`, :mod:`caopd.tracking`) and what it imports. In every key below.
HARNESS_CODE: tuple[str, ...] = (
    "caopd/__init__.py",
    "caopd/artifacts.py",
    "caopd/config.py",
    "caopd/hashing.py",
    "caopd/job.py",
    "caopd/key_neutral.py",
    "caopd/objective_config.py",
    "caopd/plan.py",
    "caopd/resources.py",
    "caopd/sources.py",
    "caopd/stage_code.py",
    "caopd/store.py",
    "caopd/tracking.py",
)

#: Sampling from a model over a prepared split: the rollout engines, the model loader, the split
#: reader, the Parquet writer, the confidence grammar and the tasks (their prompts).
SAMPLING_CODE: tuple[str, ...] = (
    "caopd/rollouts",
    "caopd/models",
    "caopd/data.py",
    "caopd/parquet.py",
    "caopd/confidence.py",
    "caopd/tasks",
    # issue 18: the length curriculum's decision in the training rollouts (caopd.rollouts.stage)
    "caopd/training/__init__.py",
    "caopd/training/curriculum.py",
    "caopd/training/entropy.py",
)

#: Source files (or directories of ``*.py``) each stage runs, relative to the repository root:
#: the import closure of its workflow script (tests/test_stage_code.py derives it and checks it).
#: Editing any of them changes that stage's key and so the keys of everything downstream.
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "prepare_data": (
        *HARNESS_CODE,
        "caopd/data.py",
        "caopd/confidence.py",
        "caopd/tasks",
        "workflow/scripts/prepare_data.py",
    ),
    "base_model": (
        *HARNESS_CODE,
        "caopd/models",
        "caopd/confidence.py",
        "caopd/tasks",
        "workflow/scripts/base_model.py",
    ),
    "rollouts": (
        *HARNESS_CODE,
        *SAMPLING_CODE,
        "workflow/scripts/rollouts.py",
    ),
    "targets": (
        *HARNESS_CODE,
        "caopd/targets.py",
        "caopd/rollouts",
        "caopd/data.py",
        "caopd/parquet.py",
        "caopd/confidence.py",
        "caopd/tasks",
        "workflow/scripts/targets.py",
    ),
    # rollouts.prefix_source: teacher: the teacher's samples from the teacher prompt
    "teacher_rollouts": (
        *HARNESS_CODE,
        *SAMPLING_CODE,
        "caopd/completion.py",
        "caopd/targets.py",
        "workflow/scripts/teacher_rollouts.py",
    ),
    "rewrite": (
        *HARNESS_CODE,
        "caopd/rewrite",
        "caopd/completion.py",
        "caopd/targets.py",
        *SAMPLING_CODE,
        "workflow/scripts/rewrite.py",
    ),
    # online rounds sample, verify and rewrite inside the job (caopd.training.online)
    "distill": (
        *HARNESS_CODE,
        "caopd/training",
        "caopd/rollouts",
        "caopd/models",
        "caopd/targets.py",
        "caopd/rewrite",
        "caopd/completion.py",
        "caopd/confidence.py",
        "caopd/tasks",
        "caopd/data.py",
        "caopd/parquet.py",
        "workflow/scripts/distill.py",
    ),
    "eval_rollouts": (
        *HARNESS_CODE,
        *SAMPLING_CODE,
        "workflow/scripts/eval_rollouts.py",
    ),
    "evaluate": (
        *HARNESS_CODE,
        "caopd/evaluation/__init__.py",
        "caopd/evaluation/stage.py",
        "caopd/evaluation/metrics.py",
        "caopd/evaluation/bootstrap.py",
        "caopd/evaluation/summary.py",
        "caopd/rollouts",
        "caopd/data.py",
        "caopd/parquet.py",
        "caopd/confidence.py",
        "caopd/tasks",
        "workflow/scripts/evaluate.py",
    ),
    "plots": (
        *HARNESS_CODE,
        "caopd/evaluation/__init__.py",
        "caopd/evaluation/plots.py",
        "caopd/evaluation/metrics.py",
        "caopd/evaluation/bootstrap.py",
        "caopd/reporting.py",
        "caopd/index.py",
        "caopd/targets.py",
        "caopd/parquet.py",
        "workflow/scripts/plots.py",
    ),
}

STAGES: tuple[str, ...] = tuple(STAGE_CODE)

#: Source files of the ``compare`` rule. Its outputs sit at fixed paths (``results/compare/``),
#: not under a key, and Snakemake's code trigger hashes only the rule's own script; the rule takes
#: the fingerprint of these files as a param, so an edit to any of them reruns it.
COMPARE_CODE: tuple[str, ...] = (
    *HARNESS_CODE,
    "caopd/evaluation/__init__.py",
    "caopd/evaluation/metrics.py",
    "caopd/evaluation/bootstrap.py",
    "caopd/index.py",
    "caopd/parquet.py",
    "caopd/reporting.py",
    "caopd/checks.py",
    "caopd/evaluation/plots.py",
    "workflow/scripts/compare.py",
)

#: Source files of the ``index`` rule (fixed path ``results/index/<variant>.json``), taken as a
#: param for the same reason; the workflow's profiles leave out Snakemake's mtime-based ``code``
#: trigger, which a fresh clone would fail (profiles/default/config.yaml).
INDEX_CODE: tuple[str, ...] = (*HARNESS_CODE, "caopd/index.py", "caopd/parquet.py", "workflow/scripts/index.py")
