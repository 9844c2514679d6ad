# Stages eval_rollouts and evaluate (DESIGN §8): a model's answers on the eval split (greedy by
# default, as the reference evaluates), verified and parsed, then calibration metrics with
# bootstrap intervals. Output: predictions.parquet / metrics.json + scored.parquet.


rule eval_rollouts:
    input:
        unpack(stage_inputs("eval_rollouts")),
    output:
        directory("results/eval_rollouts/{key}"),
    params:
        spec=stage_preimage("eval_rollouts"),
        seed=stage_seed("eval_rollouts"),
    threads: stage_threads("eval_rollouts")
    resources:
        gpu=stage_gpus("eval_rollouts"),
    log:
        "logs/eval_rollouts/{key}.log",
    benchmark:
        "logs/benchmarks/eval_rollouts/{key}.tsv"
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/eval_rollouts.py"


rule evaluate:
    input:
        unpack(stage_inputs("evaluate")),
    output:
        directory("results/evaluate/{key}"),
    params:
        spec=stage_preimage("evaluate"),
        seed=stage_seed("evaluate"),
    log:
        "logs/evaluate/{key}.log",
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/evaluate.py"
