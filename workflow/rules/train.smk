rule train_run:
    input:
        normalized=shard_files("normalize"),
        crops=shard_files("crop"),
        reports=shard_files("reports"),
        embed=shard_files("embed"),
        concepts="results/embed/concepts.h5",
        teacher=teacher_weights(),
    output:
        model="results/train/{run}/model.pt",
        metrics="results/train/{run}/metrics.jsonl",
        summary="results/train/{run}/summary.json",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    wildcard_constraints:
        run=r"[A-Za-z0-9_-]+",
    conda:
        ENV
    threads: workflow.cores
    resources:
        mem_mb=8000,
    params:
        cfg=run_config,
        truth=ground_truth(),
        version=stage_version("train"),
    script:
        "../scripts/train.py"


# The main job: the full student (`snakemake --cores 8 train`).
rule train:
    input:
        "results/train/student/model.pt",


rule stage_train:
    input:
        expand("results/train/{run}/model.pt", run=run_names()),
