# Stage base_model (DESIGN §6): resolve a hub id / local path offline, or build and warm up the
# embedded tiny model. Output: results/base_model/<key>/model (save_pretrained, safetensors).


rule base_model:
    input:
        unpack(stage_inputs("base_model")),
    output:
        directory("results/base_model/{key}"),
    params:
        spec=stage_preimage("base_model"),
        seed=stage_seed("base_model"),
    threads: stage_threads("base_model")
    log:
        "logs/base_model/{key}.log",
    benchmark:
        "logs/benchmarks/base_model/{key}.tsv"
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/base_model.py"
