# Stage distill(r) (DESIGN §1 step 4): the student trained on round r's examples against the EMA
# teacher; optimizer, scheduler and teacher carried across rounds. Resumable from
# results/.work/distill/<key>/ when a job is killed midway.


rule distill:
    input:
        unpack(stage_inputs("distill")),
    output:
        directory("results/distill/{key}"),
    params:
        spec=stage_preimage("distill"),
        seed=stage_seed("distill"),
    threads: 8
    log:
        "logs/distill/{key}.log",
    benchmark:
        "logs/benchmarks/distill/{key}.tsv"
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/distill.py"
