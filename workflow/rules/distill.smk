# Stage distill(r) (DESIGN §1 step 4): the student trained on round r's examples against the EMA
# teacher; optimizer, scheduler and teacher carried across rounds. Resumable from
# results/.work/distill/<key>/ when a job is killed midway. With distill.processes: N > 1 the job
# starts `accelerate launch` of N processes (DESIGN §10): it asks for N GPUs (none with a use_cpu
# accelerate config) and threads.distill threads per process; these are resources, not params or
# key, as are distill.sharding (fsdp2) and distill.gradient_checkpointing (the job adds them to its
# params).


rule distill:
    input:
        unpack(stage_inputs("distill")),
    output:
        directory("results/distill/{key}"),
    params:
        spec=stage_preimage("distill"),
        seed=stage_seed("distill"),
    threads: stage_threads("distill")
    resources:
        gpu=stage_gpus("distill"),
        processes=get_distill_processes,
        accelerate_config=get_distill_accelerate_config,
        sharding=get_distill_sharding,
        gradient_checkpointing=get_distill_gradient_checkpointing,
    log:
        "logs/distill/{key}.log",
    benchmark:
        "logs/benchmarks/distill/{key}.tsv"
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/distill.py"
