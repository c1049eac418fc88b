rule evaluate:
    input:
        normalized=shard_files("normalize"),
        crops=shard_files("crop"),
        reports=shard_files("reports"),
        models=list(evaluated_models().values()),
        pinned=pinned_manifests(),
    output:
        metrics="results/evaluate/metrics.json",
        report=report("results/evaluate/report.md", category="Evaluation", labels={"figure": "tables"}),
        roc=report("results/evaluate/roc.png", category="Evaluation", labels={"figure": "zero-shot ROC"}),
        retrieval=report("results/evaluate/retrieval.png", category="Evaluation", labels={"figure": "retrieval"}),
    log:
        "logs/evaluate/evaluate.log",
    benchmark:
        "benchmarks/evaluate/evaluate.tsv"
    conda:
        ENV
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    params:
        cfg=evaluate_config(),
        models=evaluated_models(),
        architectures=evaluated_architectures(),
        truth=ground_truth(),
        prepare={k: config[k] for k in ("normalize", "segment", "crop")},  # benchmark images, as a file is prepared
        version=stage_version("evaluate"),
    script:
        "../scripts/evaluate.py"


rule visualize:
    input:
        normalized=shard_files("normalize"),
        crops=shard_files("crop"),
        reports=shard_files("reports"),
        baseline=teacher_weights(),
        student="results/train/student/model.pt",
    output:
        report(directory("results/visualize"), patterns=["{name}.png"], category="Grounding"),
    log:
        "logs/visualize/visualize.log",
    conda:
        ENV
    threads: rule_threads("visualize")
    resources:
        **rule_resources("visualize"),
    params:
        architectures={"baseline": config["teacher"]["model"], "student": config["train"]["model"]},
        truth=ground_truth(),
        split=config["evaluate"]["split"],  # the cases drawn: evaluate's split
        version=stage_version("evaluate"),
    script:
        "../scripts/visualize.py"
