# Stage prepare_data (DESIGN §3, §5): a task's train / val / eval splits as JSONL of prepared
# examples (student prompt with the confidence instruction, demonstration, ground truth).


rule prepare_data:
    input:
        unpack(stage_inputs("prepare_data")),
    output:
        directory("results/prepare_data/{key}"),
    params:
        spec=stage_preimage("prepare_data"),
        seed=stage_seed("prepare_data"),
    log:
        "logs/prepare_data/{key}.log",
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/prepare_data.py"
