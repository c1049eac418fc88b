rule synthesize:
    output:
        directory(config["data"]["synthetic"]["out_dir"]),
    log:
        "logs/synthesize/synthesize.log",
    benchmark:
        "benchmarks/synthesize/synthesize.tsv"
    conda:
        ENV
    threads: workflow.cores
    params:
        cfg=config["data"]["synthetic"],
        version=stage_version("synthesize"),
    script:
        "../scripts/synthesize.py"


rule stage_synthesize:
    input:
        rules.synthesize.output,
