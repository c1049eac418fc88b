rule crop:
    input:
        normalized="results/normalize/shard-{shard}.h5",
        segmented="results/segment/shard-{shard}.h5",
    output:
        shard="results/crop/shard-{shard}.h5",
    log:
        "logs/crop/shard-{shard}.log",
    benchmark:
        "benchmarks/crop/shard-{shard}.tsv"
    conda:
        ENV
    threads: rule_threads("crop")
    resources:
        **rule_resources("crop"),
    params:
        cfg=stage_config("crop"),
        version=stage_version("crop"),
    script:
        "../scripts/crop.py"


rule stage_crop:
    input:
        shard_files("crop"),
