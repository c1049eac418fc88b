# Helpers shared by every rule: config validation, the shard list, stage config and versions.
import json
import re
from pathlib import Path

from pipeline import config as pipeline_config
from pipeline import model_spec
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


def mask_sources(wildcards):
    """segment.train's files: a changed mask table retrains the U-Net."""
    return [src["path"] for src in config["segment"]["train"]]


def teacher_weights(wildcards=None):
    """teacher.weights when it names a file, else a local-dir folder's own weights (fit_teacher is then skipped),
    else the fitted teacher."""
    t = config["teacher"]
    return t["weights"] or model_spec.folder_weights(t["model"]) or "results/teacher/model.pt"


def shard_ids():
    """Shard ids from the ingest checkpoint's plan (re-evaluated after ingest runs)."""
    with open(checkpoints.ingest.get().output.plan) as f:
        return sorted(json.load(f)["shards"])


def shard_files(stage):
    def files(wildcards):
        return expand(f"results/{stage}/shard-{{shard}}.h5", shard=shard_ids())

    return files


def pretraining_config():
    """The cohort's own section plus the generator's finding mix, which it shares with the synthetic source."""
    syn = config["data"]["synthetic"]
    return {**config["pretraining"], "normal_fraction": syn["normal_fraction"], "prevalence": syn["prevalence"]}


def pretraining_files(wildcards=None):
    return expand("results/pretraining/shard-{shard}.h5", shard=[f"{k:05d}" for k in range(pipeline_config.pretraining_shards(config["pretraining"]))])


def teacher_fit_inputs(wildcards):
    """The pretraining cohort's shards, or the target cohort's model_inputs, normalize and report shards."""
    if config["teacher"]["fit_on"] == "pretraining":
        return {"pretraining": pretraining_files()}
    return {"inputs": teacher_input_files(wildcards), "normalized": shard_files("normalize")(wildcards),
            "reports": shard_files("reports")(wildcards)}


def embed_config():
    """embed_teacher depends on the teacher's architecture and weights file only, not on how it was fitted."""
    return {"model": config["teacher"]["model"]}


def run_names():
    """Every run to train: evaluate.runs and the seed replicas of student and the control (`student@1`, ...)."""
    return pipeline_config.seeded_runs(config)


def run_name_pattern():
    """The wildcard constraint of {run}: the configured runs only, so that an unknown run name given as a target
    (results/train/nosuchrun/model.pt) matches no rule instead of training with train's values."""
    return "|".join(re.escape(name) for name in run_names())


def run_config(wildcards):
    """train's section with the run's overrides: changing one run's values retrains that run only."""
    return pipeline_config.run_config(config, wildcards.run)


def input_files(model):
    """The model_inputs shards at the input size and resampling of a model (read from its config, which spares
    the workflow an open_clip import)."""
    key = model_spec.input_spec(model).key
    return expand("results/inputs/{key}/shard-{shard}.h5", key=key, shard=shard_ids())


def model_input_files(wildcards):
    """The model_inputs shards a run's architecture reads."""
    return input_files(run_config(wildcards)["model"])


def teacher_input_files(wildcards):
    return input_files(config["teacher"]["model"])


def ground_truth():
    """The synthetic source's truth (grounding boxes, pairing accuracy in evaluate); real data has none."""
    if config["data"]["source"] != "synthetic":
        return ""
    return f"{config['data']['synthetic']['out_dir']}/ground_truth"


def evaluated_models():
    """run name -> weights: the global baseline (the teacher), every run of evaluate.runs, and the external
    baselines of evaluate.baselines (a local-dir folder's own weights unless a file is named)."""
    external = {n: b["weights"] or model_spec.folder_weights(b["model"])
                for n, b in config["evaluate"]["baselines"].items()}
    return {"baseline": teacher_weights(), **{r: f"results/train/{r}/model.pt" for r in run_names()}, **external}


def evaluated_architectures():
    return {"baseline": config["teacher"]["model"],
            **{r: pipeline_config.run_config(config, r)["model"] for r in run_names()},
            **{n: b["model"] for n, b in config["evaluate"]["baselines"].items()}}


def manifests_folder():
    """evaluate.manifests, a relative path read against the working directory, else against the repository."""
    folder = config["evaluate"]["manifests"]
    return str(pipeline_config.repository_path(folder)) if folder else ""


def evaluate_config():
    return {**config["evaluate"], "manifests": manifests_folder()}


def pinned_manifests():
    """The pinned evaluation sets of evaluate.manifests (a change to one reruns evaluate)."""
    folder = manifests_folder()
    return sorted(str(p) for p in Path(folder).glob("*.json")) if folder else []


def _rule_resources(name):
    """resources.default, then the schema's entry for the rule, then config's, key by key (so that
    `--config resources="{train_run: {gpu: 2}}"`, which replaces the section, changes that one value only)."""
    schema = pipeline_config.load_schema()["properties"]["resources"]["properties"]
    return {**config["resources"]["default"], **schema[name]["default"], **config["resources"].get(name, {})}


def rule_threads(name):
    return _rule_resources(name)["threads"]


def torchrun_processes(wildcards):
    """Processes a train_run job starts (train.nproc_per_node of the run)."""
    return run_config(wildcards)["nproc_per_node"]


def rule_resources(name, gpu_per=None):
    """A rule's `resources:` (mem_mb, runtime in minutes, and gpu where it asks for one, times `gpu_per(wildcards)`
    when given). Threads come from config rather than `workflow.cores`, which `--report` and cluster runs leave
    undefined."""
    r = _rule_resources(name)
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"]}
    if r["gpu"]:
        out["gpu"] = (lambda wildcards: r["gpu"] * gpu_per(wildcards)) if gpu_per else r["gpu"]
    return out
