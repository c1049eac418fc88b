# One shard of the synthetic pretraining cohort, drawn at the teacher's input size.
rule pretraining:
    output:
        "results/pretraining/shard-{shard}.h5",
    log:
        "logs/pretraining/shard-{shard}.log",
    benchmark:
        "benchmarks/pretraining/shard-{shard}.tsv"
    conda:
        ENV
    threads: rule_threads("pretraining")
    resources:
        **rule_resources("pretraining"),
    params:
        cfg=pretraining_config(),
        size=model_spec.input_spec(config["teacher"]["model"]).size,
        version=stage_version("pretraining"),
    script:
        "../scripts/pretraining.py"


rule stage_pretraining:
    input:
        pretraining_files,
