rule normalize:
    input:
        studies="results/ingest/studies.csv",
        plan="results/ingest/shards.json",
    output:
        shard="results/normalize/shard-{shard}.h5",
        png=directory("results/normalize/png/shard-{shard}"),
    log:
        "logs/normalize/shard-{shard}.log",
    benchmark:
        "benchmarks/normalize/shard-{shard}.tsv"
    conda:
        ENV
    threads: rule_threads("normalize")
    resources:
        **rule_resources("normalize"),
    params:
        cfg=stage_config("normalize"),
        version=stage_version("normalize"),
    script:
        "../scripts/normalize.py"


rule stage_normalize:
    input:
        shard_files("normalize"),
