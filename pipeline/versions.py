"""STAGE_VERSION of every stage. Snakemake does not track code inside pipeline/, so a change that alters
what a stage writes bumps its number here; the rule passes it in `params:` and the stage reruns."""

STAGE_VERSIONS = {
    "synthesize": 3,
    "pretraining": 2,
    "ingest": 3,
    "normalize": 3,
    "parse_reports": 3,
    "train_segmenter": 2,
    "segment": 1,
    "crop": 1,
    "fit_teacher": 2,
    "embed_teacher": 2,
    "model_inputs": 1,
    "train": 3,
    "evaluate": 5,
}
