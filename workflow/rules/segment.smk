rule train_segmenter:
    input:
        shards=shard_files("normalize"),
        studies="results/ingest/studies.csv",
        source=source_input,
        masks=mask_sources,
    output:
        model="results/segmenter/unet.pt",
        metrics="results/segmenter/metrics.json",
    log:
        "logs/train_segmenter/train_segmenter.log",
    benchmark:
        "benchmarks/train_segmenter/train_segmenter.tsv"
    conda:
        ENV
    threads: rule_threads("train_segmenter")
    resources:
        **rule_resources("train_segmenter"),
    params:
        cfg=stage_config("segment"),
        norm_cfg=stage_config("normalize"),
        split=config["data"]["split"],
        masks_dir=f"{config['data']['synthetic']['out_dir']}/ground_truth/masks",
        version=stage_version("train_segmenter"),
    script:
        "../scripts/train_segmenter.py"


rule segment:
    input:
        shard="results/normalize/shard-{shard}.h5",
        weights=segmenter_weights,
    output:
        shard="results/segment/shard-{shard}.h5",
    log:
        "logs/segment/shard-{shard}.log",
    benchmark:
        "benchmarks/segment/shard-{shard}.tsv"
    conda:
        ENV
    threads: rule_threads("segment")
    resources:
        **rule_resources("segment"),
    params:
        cfg=stage_config("segment"),
        version=stage_version("segment"),
    script:
        "../scripts/segment.py"


rule stage_segment:
    input:
        shard_files("segment"),
