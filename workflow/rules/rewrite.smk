# Stage rewrite(r) (DESIGN §1 step 3): training examples as token ids. CaOPD: the completion's
# last `Confidence:` label (the one the parser reads) replaced by `Confidence: {P_acc:.2f}` + EOS
# at the token level, the teacher demo's confidence replaced and the note inserted. SDFT
# (calibration off): completion untouched.


rule rewrite:
    input:
        unpack(stage_inputs("rewrite")),
    output:
        directory("results/rewrite/{key}"),
    params:
        spec=stage_preimage("rewrite"),
        seed=stage_seed("rewrite"),
    log:
        "logs/rewrite/{key}.log",
    conda:
        "../../envs/caopd.yaml"
    script:
        "../scripts/rewrite.py"
