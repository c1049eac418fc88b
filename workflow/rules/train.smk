# Each normalized image at a model's input size and resampling (key: 96px, 224px-bicubic), uncompressed: what the
# student's batches are read from.
rule model_inputs:
    input:
        normalized="results/normalize/shard-{shard}.h5",
    output:
        shard="results/inputs/{key}/shard-{shard}.h5",
    log:
        "logs/model_inputs/{key}/shard-{shard}.log",
    benchmark:
        "benchmarks/model_inputs/{key}/shard-{shard}.tsv"
    wildcard_constraints:
        key=r"\d+px(-bicubic)?",
    conda:
        ENV
    threads: rule_threads("model_inputs")
    resources:
        **rule_resources("model_inputs"),
    params:
        version=stage_version("model_inputs"),
    script:
        "../scripts/model_inputs.py"


rule train_run:
    input:
        inputs=model_input_files,
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
        run=run_name_pattern(),
    conda:
        ENV
    threads: rule_threads("train_run")
    resources:
        **rule_resources("train_run", gpu_per=torchrun_processes),
    params:
        cfg=run_config,
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
