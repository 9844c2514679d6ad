# CaOPD: calibration-aware on-policy distillation, from data to calibration report.
#
#   snakemake --cores all                 # every variant in config/config.yaml (the embedded default)
#   snakemake --cores all caopd           # one variant (ablation branch) alone
#   snakemake --cores all --use-conda     # with the pinned environments of envs/
#   snakemake --report report.html        # figures and metrics of every variant
#
# Every artifact lives in results/<stage>/<key>/, its key computed from the stage's params, code
# and upstream keys (caopd/plan.py); results/index/<variant>.json maps a variant to its artifacts.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base_model.smk"
include: "workflow/rules/rollouts.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/rewrite.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/plots.smk"


rule all:
    input:
        get_all_targets,
    default_target: True


for _variant in VARIANTS:

    rule:
        name:
            _variant
        input:
            f"results/index/{_variant}.json",
