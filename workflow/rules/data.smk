# Stage prepare_data (DESIGN §3, §5): a task's train / val / eval splits as JSONL of prepared
# examples (student prompt with the confidence instruction, demonstration, ground truth).


rule tracking_store:
    output:
        TRACKING_READY,
    params:
        tracking=TRACKING,
        root=workflow.basedir,
    log:
        "logs/tracking_store.log",
    localrule: True
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/tracking_store.py"


rule prepare_data:
    input:
        unpack(stage_inputs("prepare_data")),
    output:
        directory("results/prepare_data/{key}"),
    params:
        spec=stage_preimage("prepare_data"),
        seed=stage_seed("prepare_data"),
        root=workflow.basedir,
        tracking=TRACKING,
    log:
        "logs/prepare_data/{key}.log",
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/prepare_data.py"
