# Config resolution, the stage plan and the input functions every rule uses.
# Parse time stays cheap: caopd.config and caopd.plan import neither torch nor mlflow.
# Where a job runs (this checkout's path) and where it logs (the MLflow URI) are read by the job
# itself (caopd.job), never passed as params or inputs: moving the checkout or the tracking server
# reruns nothing.

import sys

sys.path.insert(0, workflow.basedir)

from caopd.config import resolve
from caopd.hashing import code_fingerprint
from caopd.memory_report import check_memory
from caopd.plan import COMPARE_CODE, INDEX_CODE, build_plan

RESOLVED = resolve(config)
check_memory(RESOLVED["variants"])  # distill.gpu_memory_gb: a layout that cannot fit is refused here
PLAN = build_plan(RESOLVED, root=workflow.basedir)
VARIANTS = list(PLAN.variants)
COMPARE_FINGERPRINT = code_fingerprint(COMPARE_CODE, workflow.basedir)
INDEX_FINGERPRINT = code_fingerprint(INDEX_CODE, workflow.basedir)


wildcard_constraints:
    key="[0-9a-f]{16}",
    variant="|".join(VARIANTS),


def get_all_targets(wildcards):
    return [f"results/index/{v}.json" for v in VARIANTS] + [
        "results/compare/metrics.tsv",
        "results/compare/accuracy_vs_confidence.png",
        "results/compare/accuracy_vs_ece.png",
        "results/compare/checks.txt",
    ]


def stage_inputs(stage):
    """Input function of a stage rule: upstream artifact dirs by role."""

    def get_stage_inputs(wildcards):
        return PLAN.spec(stage, wildcards.key).input_paths()

    get_stage_inputs.__name__ = f"get_{stage}_inputs"
    return get_stage_inputs


def stage_preimage(stage):
    """Params function: the key's preimage (stage, params, code, upstream), spec.json's body."""

    def get_stage_preimage(wildcards):
        return PLAN.spec(stage, wildcards.key).preimage

    get_stage_preimage.__name__ = f"get_{stage}_preimage"
    return get_stage_preimage


def stage_seed(stage):
    """Params function: the stage's seed, derived from its draw key (caopd.plan)."""

    def get_stage_seed(wildcards):
        return PLAN.spec(stage, wildcards.key).seed

    get_stage_seed.__name__ = f"get_{stage}_seed"
    return get_stage_seed


def get_variant_artifacts(wildcards):
    return [spec.path for spec in PLAN.variants[wildcards.variant].stages]


def get_variant_stage_table(wildcards):
    return [
        {"stage": s.stage, "round": s.round, "key": s.key, "path": s.path}
        for s in PLAN.variants[wildcards.variant].stages
    ]


def get_evaluations(wildcards):
    return {v: PLAN.variants[v].get("evaluate").path for v in VARIANTS}


# What a job asks of the machine (caopd.resources), looked up by key: resources and threads, never
# params, so a job's layout on its allocation (GPUs, processes, CPUs) reruns nothing.


def stage_gpus(stage):
    """Resource function: the GPUs of a stage's job (a SLURM job asks --gpus=N)."""

    def get_stage_gpus(wildcards):
        return PLAN.spec(stage, wildcards.key).launch["gpus"]

    get_stage_gpus.__name__ = f"get_{stage}_gpus"
    return get_stage_gpus


def stage_threads(stage):
    """Threads function: the CPU threads of a stage's job (config `threads`; a SLURM job asks
    --cpus-per-task=N)."""

    def get_stage_threads(wildcards):
        return PLAN.spec(stage, wildcards.key).launch["threads"]

    get_stage_threads.__name__ = f"get_{stage}_threads"
    return get_stage_threads


def get_distill_processes(wildcards):
    return PLAN.spec("distill", wildcards.key).launch["processes"]


def get_distill_accelerate_config(wildcards):
    return PLAN.spec("distill", wildcards.key).launch["accelerate_config"]


def get_distill_sharding(wildcards):
    return PLAN.spec("distill", wildcards.key).launch["sharding"]


def get_distill_gradient_checkpointing(wildcards):
    return PLAN.spec("distill", wildcards.key).launch["gradient_checkpointing"]
