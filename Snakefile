# CaOPD: calibration-aware on-policy distillation, from data to calibration report.
#
#   snakemake --cores all                 # every variant in config/config.yaml (the embedded default)
#   snakemake --cores all caopd           # one variant (ablation branch) alone
#   snakemake --cores all --sdm conda     # with the pinned environments of envs/
#   snakemake --report report.html        # figures and metrics of every variant
#
# Every artifact lives in results/<stage>/<key>/, its key computed from the stage's params, code
# and upstream keys (caopd/plan.py); results/index/<variant>.json maps a variant to its artifacts.
#
# Config: config/config.yaml, unless --configfile names the config: then those files alone are
# read, in order (every other setting from the schema), so a preset or config/smoke.yaml runs
# exactly what it says. Overlay on the default by naming both:
#   snakemake --configfile config/config.yaml config/tuning.yaml

from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base_model.smk"
include: "workflow/rules/rollouts.smk"
include: "workflow/rules/teacher_rollouts.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/rewrite.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/plots.smk"


# Once, before any job and never in a dry run: create a fresh SQLite MLflow store (concurrent first
# use fails) or check that the tracking server answers, within seconds, and name it on the console.
onstart:
    from caopd.tracking import start_tracking

    start_tracking(config)


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
