checkpoint ingest:
    input:
        source_input,
    output:
        studies="results/ingest/studies.csv",
        plan="results/ingest/shards.json",
        rejected="results/ingest/rejected.csv",
    log:
        "logs/ingest/ingest.log",
    benchmark:
        "benchmarks/ingest/ingest.tsv"
    conda:
        ENV
    threads: rule_threads("ingest")
    resources:
        **rule_resources("ingest"),
    params:
        cfg=stage_config("data"),
        version=stage_version("ingest"),
    script:
        "../scripts/ingest.py"


rule stage_ingest:
    input:
        rules.ingest.output,
