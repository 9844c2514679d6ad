# Stage teacher_rollouts(r) (DESIGN §11, rollouts.prefix_source: teacher): K samples per training
# prompt of round r's slice from the privileged teacher, i.e. the current student's weights given
# the teacher prompt the rewrite builds (the student's P_acc and, in correct_solution mode, its
# verified rollout in it; so it reads the student's rollouts(r) and targets(r)). The rewrite
# trains on these samples; P_acc stays the student's. Output: rollouts.parquet (teacher's samples).


rule teacher_rollouts:
    input:
        unpack(stage_inputs("teacher_rollouts")),
    output:
        directory("results/teacher_rollouts/{key}"),
    params:
        spec=stage_preimage("teacher_rollouts"),
        seed=stage_seed("teacher_rollouts"),
    threads: stage_threads("teacher_rollouts")
    resources:
        gpu=stage_gpus("teacher_rollouts"),
    log:
        "logs/teacher_rollouts/{key}.log",
    benchmark:
        "logs/benchmarks/teacher_rollouts/{key}.tsv"
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/teacher_rollouts.py"
