# Stage plots (per variant, keyed), the across-variant comparison, and the per-variant index
# results/index/<variant>.json that maps each stage to its key, path and MLflow run.


rule plots:
    input:
        unpack(stage_inputs("plots")),
    output:
        report(
            directory("results/plots/{key}"),
            patterns=["{name}.png"],
            caption="../report/variant_figures.rst",
            category="Variant figures",
            subcategory="{key}",
        ),
    params:
        spec=stage_preimage("plots"),
        seed=stage_seed("plots"),
    log:
        "logs/plots/{key}.log",
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/plots.py"


rule index:
    input:
        get_variant_artifacts,
    output:
        "results/index/{variant}.json",
    params:
        stages=get_variant_stage_table,
        code=INDEX_FINGERPRINT,  # fixed output path: an edit of its code reruns it via params
    log:
        "logs/index/{variant}.log",
    localrule: True
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/index.py"


rule compare:
    input:
        unpack(get_evaluations),
    output:
        table=report("results/compare/metrics.tsv", category="Comparison"),
        confidence=report(
            "results/compare/accuracy_vs_confidence.png",
            caption="../report/accuracy_vs_confidence.rst",
            category="Comparison",
        ),
        ece=report(
            "results/compare/accuracy_vs_ece.png",
            caption="../report/accuracy_vs_ece.rst",
            category="Comparison",
        ),
        checks=report(
            "results/compare/checks.txt",
            caption="../report/checks.rst",
            category="Comparison",
        ),
    params:
        code=COMPARE_FINGERPRINT,  # fixed output paths: an edit of its code reruns it via params
    log:
        "logs/compare.log",
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/compare.py"
