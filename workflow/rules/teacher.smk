rule fit_teacher:
    input:
        unpack(teacher_fit_inputs),
    output:
        model="results/teacher/model.pt",
        metrics="results/teacher/metrics.jsonl",
    log:
        "logs/fit_teacher/fit_teacher.log",
    benchmark:
        "benchmarks/fit_teacher/fit_teacher.tsv"
    conda:
        ENV
    threads: rule_threads("fit_teacher")
    resources:
        **rule_resources("fit_teacher"),
    params:
        cfg=stage_config("teacher"),
        version=stage_version("fit_teacher"),
    script:
        "../scripts/fit_teacher.py"


rule stage_fit_teacher:
    input:
        rules.fit_teacher.output,
