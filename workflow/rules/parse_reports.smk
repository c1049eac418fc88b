rule parse_reports:
    input:
        studies="results/ingest/studies.csv",
        plan="results/ingest/shards.json",
    output:
        shard="results/reports/shard-{shard}.h5",
    log:
        "logs/parse_reports/shard-{shard}.log",
    benchmark:
        "benchmarks/parse_reports/shard-{shard}.tsv"
    conda:
        ENV
    threads: rule_threads("parse_reports")
    resources:
        **rule_resources("parse_reports"),
    params:
        cfg=stage_config("parse_reports"),
        version=stage_version("parse_reports"),
    script:
        "../scripts/parse_reports.py"


rule stage_parse_reports:
    input:
        shard_files("reports"),
