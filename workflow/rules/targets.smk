# Stage targets(r) (DESIGN §1 step 2): every rollout verified with the task's one verifier;
# P_acc = correct / K per prompt; per-rollout correctness and parsed confidence kept.


rule targets:
    input:
        unpack(stage_inputs("targets")),
    output:
        directory("results/targets/{key}"),
    params:
        spec=stage_preimage("targets"),
        seed=stage_seed("targets"),
    log:
        "logs/targets/{key}.log",
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/targets.py"
