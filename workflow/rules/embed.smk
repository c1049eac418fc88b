rule embed_concepts:
    input:
        teacher=teacher_weights(),
    output:
        concepts="results/embed/concepts.h5",
    log:
        "logs/embed_teacher/concepts.log",
    benchmark:
        "benchmarks/embed_teacher/concepts.tsv"
    conda:
        ENV
    threads: rule_threads("embed_concepts")
    resources:
        **rule_resources("embed_concepts"),
    params:
        cfg=embed_config(),
        version=stage_version("embed_teacher"),
    script:
        "../scripts/embed_concepts.py"


rule embed_teacher:
    input:
        normalized="results/normalize/shard-{shard}.h5",
        crops="results/crop/shard-{shard}.h5",
        reports="results/reports/shard-{shard}.h5",
        teacher=teacher_weights(),
    output:
        shard="results/embed/shard-{shard}.h5",
    log:
        "logs/embed_teacher/shard-{shard}.log",
    benchmark:
        "benchmarks/embed_teacher/shard-{shard}.tsv"
    conda:
        ENV
    threads: rule_threads("embed_teacher")
    resources:
        **rule_resources("embed_teacher"),
    params:
        cfg=embed_config(),
        version=stage_version("embed_teacher"),
    script:
        "../scripts/embed_teacher.py"


rule stage_embed_teacher:
    input:
        shard_files("embed"),
        "results/embed/concepts.h5",
