rule synthesize:
    output:
        directory(config["data"]["synthetic"]["out_dir"]),
    log:
        "logs/synthesize/synthesize.log",
    benchmark:
        "benchmarks/synthesize/synthesize.tsv"
    conda:
        ENV
    threads: rule_threads("synthesize")
    resources:
        **rule_resources("synthesize"),
    params:
        cfg=config["data"]["synthetic"],
        version=stage_version("synthesize"),
    script:
        "../scripts/synthesize.py"


rule stage_synthesize:
    input:
        rules.synthesize.output,
