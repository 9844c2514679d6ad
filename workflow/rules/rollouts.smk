# Stage rollouts(r) (DESIGN §3, §7): K samples per training prompt of round r's slice, from the
# student after round r-1, through the configured rollout engine. Output: rollouts.parquet.


rule rollouts:
    input:
        unpack(stage_inputs("rollouts")),
    output:
        directory("results/rollouts/{key}"),
    params:
        spec=stage_preimage("rollouts"),
        seed=stage_seed("rollouts"),
    threads: stage_threads("rollouts")
    resources:
        gpu=stage_gpus("rollouts"),
    log:
        "logs/rollouts/{key}.log",
    benchmark:
        "logs/benchmarks/rollouts/{key}.tsv"
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/rollouts.py"
