# Helpers shared by every rule: config validation, the shard list, stage config and versions.
import json

from pipeline import config as pipeline_config
from pipeline.versions import STAGE_VERSIONS

# Reject typos and wrong types before any job starts; fill defaults; coerce --config strings.
_validated = pipeline_config.validate(config)
config.clear()
config.update(_validated)


ENV = "../../envs/pipeline.yaml"


def stage_config(name):
    """The one config section each stage gets as params; changing it reruns that stage and what follows."""
    return config[name]


def stage_version(name):
    return STAGE_VERSIONS[name]


def source_input(wildcards):
    """The synthetic source is built by a rule; real sources are read in place and not tracked."""
    if config["data"]["source"] == "synthetic":
        return config["data"]["synthetic"]["out_dir"]
    return []


def segmenter_weights(wildcards):
    """segment.weights when it names a file, else the U-Net that train_segmenter writes."""
    seg = config["segment"]
    if seg["weights"]:
        return seg["weights"]
    if config["data"]["source"] != "synthetic" and not seg["train"]:
        raise pipeline_config.ConfigError(
            "config key segment: real data has no synthetic masks to train on; set segment.weights "
            "(a local U-Net file) or segment.train (mask sources: CheXmask, mask tables, both-lungs masks, boxes)"
        )
    return "results/segmenter/unet.pt"


def teacher_weights(wildcards=None):
    """teacher.weights when it names a file (fit_teacher is then skipped), else the fitted teacher."""
    return config["teacher"]["weights"] or "results/teacher/model.pt"


def shard_ids():
    """Shard ids from the ingest checkpoint's plan (re-evaluated after ingest runs)."""
    with open(checkpoints.ingest.get().output.plan) as f:
        return sorted(json.load(f)["shards"])


def shard_files(stage):
    def files(wildcards):
        return expand(f"results/{stage}/shard-{{shard}}.h5", shard=shard_ids())

    return files


def embed_config():
    """embed_teacher depends on the teacher's architecture and weights file only, not on how it was fitted."""
    return {"model": config["teacher"]["model"]}


def run_names():
    return list(config["evaluate"]["runs"])


def run_config(wildcards):
    """train's section with the run's overrides: changing one run's values retrains that run only."""
    return pipeline_config.run_config(config, wildcards.run)


def model_input_files(wildcards):
    """The model_inputs shards at the input size of the run's architecture (read from its JSON config, which
    spares the workflow an open_clip import)."""
    model = run_config(wildcards)["model"]
    with open(f"{workflow.basedir}/pipeline/models/{model}.json") as f:
        size = json.load(f)["vision_cfg"]["image_size"]
    return expand("results/inputs/{size}px/shard-{shard}.h5", size=size, shard=shard_ids())


def ground_truth():
    """The synthetic source's truth, to score ROI <-> phrase pairing; real data has none."""
    if config["data"]["source"] != "synthetic":
        return ""
    return f"{config['data']['synthetic']['out_dir']}/ground_truth"


def evaluated_models():
    """run name -> weights: the global baseline (the teacher) and every run of evaluate.runs."""
    return {"baseline": teacher_weights(), **{r: f"results/train/{r}/model.pt" for r in run_names()}}


def evaluated_architectures():
    return {"baseline": config["teacher"]["model"],
            **{r: pipeline_config.run_config(config, r)["model"] for r in run_names()}}
