"""Workflow config: schema validation with defaults, type coercion, and per-stage sections.

The schema lives in `workflow/schemas/config.schema.yaml`; every section rejects unknown keys so a typo
stops the run before any job starts. Snakemake's `--config a=b` gives nested values as strings, so values
are coerced to the schema's type (YAML syntax) before validation. Beyond the schema, values whose combination
makes no sense (percentiles in the wrong order) and every input path that config names (data.root, weights,
mask tables, the spaCy model, pinned manifests, benchmark folders) are checked here, before any job: relative
paths are read against the working directory (Snakemake's --directory).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import model_spec

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = ROOT / "config.yaml"


class ConfigError(ValueError):
    """A config value is unknown, missing or of the wrong type; the message names the key."""


# libyaml's loader where PyYAML was built with it: the pure-Python one takes about 0.5 s for the schema
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.load(f, Loader=SafeLoader)


def load_schema() -> dict:
    """The config schema, parsed once per process (the Snakefile asks for it once per rule and run); a copy, so
    a caller cannot change another's."""
    return copy.deepcopy(_schema())


def _coerce(value: Any, schema: dict) -> Any:
    """Turn strings from the command line into the type the schema asks for."""
    if isinstance(value, str) and schema.get("type") in ("integer", "number", "boolean", "array", "object"):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {k: _coerce(v, props[k]) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(v, schema["items"]) for v in value]
    return value


def _fill_defaults(value: dict, schema: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if isinstance(value.get(key), dict):
            _fill_defaults(value[key], sub)


def validate(config: dict) -> dict:
    """Coerce, fill defaults and validate `config`; returns a new dict. Raises ConfigError naming the key."""
    schema = load_schema()
    cfg = _coerce(copy.deepcopy(dict(config)), schema)
    _fill_defaults(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"config key {where}: {err.message}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    split = cfg["data"]["split"]
    total = split["train"] + split["validate"] + split["test"]
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"config key data.split: fractions must add up to 1, got {total:g}")
    _check_model("teacher.model", cfg["teacher"]["model"], cfg["teacher"]["weights"], weights_key="teacher.weights")
    _check_model("train.model", cfg["train"]["model"])
    _check_init("train.init", cfg["train"]["init"])
    train_schema = schema["properties"]["train"]
    for name in cfg["evaluate"]["runs"]:
        run = run_config(cfg, name)
        for err in jsonschema.Draft202012Validator(train_schema).iter_errors(run):
            where = ".".join(str(p) for p in err.absolute_path)
            raise ConfigError(f"config key evaluate.runs.{name}{'.' + where if where else ''}: {err.message}")
        if run["init"] == "teacher" and run["model"] != cfg["teacher"]["model"]:
            raise ConfigError(f"config key evaluate.runs.{name}: init: teacher needs train.model == teacher.model "
                              f"({run['model']} != {cfg['teacher']['model']}); use init: scratch or a weights file")
        _check_model(f"evaluate.runs.{name}.model", run["model"])
        _check_init(f"evaluate.runs.{name}.init", run["init"])
    if cfg["train"]["init"] == "teacher" and cfg["train"]["model"] != cfg["teacher"]["model"]:
        raise ConfigError("config key train.init: teacher needs train.model == teacher.model; use init: scratch or a "
                          "weights file")
    for name, base in cfg["evaluate"]["baselines"].items():
        base.setdefault("weights", "")
        key = f"evaluate.baselines.{name}"
        if name in cfg["evaluate"]["runs"] or name in seeded_runs(cfg):
            raise ConfigError(f"config key {key}: {name} is also a run of evaluate.runs; give the baseline another name")
        _check_model(f"{key}.model", base["model"], base["weights"], weights_key=f"{key}.weights")
        if not base["weights"] and not model_spec.local_dir(base["model"]):
            raise ConfigError(f"config key {key}.weights: {base['model']} is not a local-dir folder; name its weights "
                              f"file")
    for name in ("student", cfg["evaluate"]["control"]):
        if name not in cfg["evaluate"]["runs"]:
            raise ConfigError(f"config key evaluate.runs: the headline compares student with evaluate.control "
                              f"({cfg['evaluate']['control']}); both must be runs, {name} is missing")
    for name in cfg["evaluate"]["crop_baselines"]:
        if name not in cfg["evaluate"]["runs"]:
            raise ConfigError(f"config key evaluate.crop_baselines: {name} is not a run of evaluate.runs")
    for name, over in cfg["evaluate"]["runs"].items():
        if "select" in (over or {}) and over["select"] != cfg["train"]["select"]:
            raise ConfigError(f"config key evaluate.runs.{name}.select: runs are compared, so they share one selection "
                              f"rule (train.select: {cfg['train']['select']})")
    for name in cfg["evaluate"]["input_controls"]:
        if name not in cfg["evaluate"]["runs"] and name != "baseline":
            raise ConfigError(f"config key evaluate.input_controls: {name} is neither a run of evaluate.runs nor baseline")
    _check_values(cfg)
    _check_paths(cfg)
    return cfg


def _check_values(cfg: dict) -> None:
    """Values each valid alone whose combination makes no sense."""
    lo, hi = cfg["normalize"]["percentile"]
    if lo >= hi:
        raise ConfigError(f"config key normalize.percentile: [{lo:g}, {hi:g}] must be [low, high] with low < high "
                          f"(e.g. [0.5, 99.5]); the other way round every image would be blank")
    least, most = cfg["data"]["synthetic"]["studies_per_patient"]
    if least > most:
        raise ConfigError(f"config key data.synthetic.studies_per_patient: [{least}, {most}] must be [min, max]")
    if sum(cfg["data"]["synthetic"]["split"]) <= 0:
        raise ConfigError("config key data.synthetic.split: the train / validate / test fractions add up to 0")
    if cfg["pretraining"]["seed"] == cfg["data"]["synthetic"]["seed"]:
        # film i of the cohort would share patient i's random stream: correlated anatomy and findings
        raise ConfigError(f"config key pretraining.seed: {cfg['pretraining']['seed']} is data.synthetic.seed too; the "
                          f"pretraining cohort must not share patients with the target cohort: choose another seed")
    runs = {"teacher": cfg["teacher"], "train": cfg["train"],
            **{f"evaluate.runs.{name}": run_config(cfg, name) for name in cfg["evaluate"]["runs"]}}
    for key, run in runs.items():
        # each process's micro-batch must hold two examples at least: a contrastive loss over one is 0
        share = run["accumulate"] * run.get("nproc_per_node", 1)
        if run["batch_size"] < 2 * share:
            raise ConfigError(f"config key {key}.batch_size: {run['batch_size']} examples split over accumulate "
                              f"{run['accumulate']} x nproc_per_node {run.get('nproc_per_node', 1)} leaves fewer than "
                              f"2 per micro-batch; raise batch_size or lower accumulate")
    for i, pattern in enumerate(cfg["data"]["scrub_reports"]):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"config key data.scrub_reports.{i}: {pattern!r} is not a regular expression ({e})") from None


def repository_path(path: str) -> Path:
    """A relative path read against the working directory, else against the repository (where the default
    config's pinned manifests live)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else ROOT / p


def _check_paths(cfg: dict) -> None:
    """Every input path config names must exist now, not be found missing inside a job."""
    def need(key: str, path: str, kind: str = "file or folder") -> None:
        p = Path(path)
        ok = p.is_file() if kind == "file" else p.is_dir() if kind == "folder" else p.exists()
        if not ok:
            raise ConfigError(f"config key {key}: {path} is not a {kind}" + ("" if p.exists() else " (not found)"))

    data = cfg["data"]
    if data["source"] != "synthetic":
        if not data["root"]:
            raise ConfigError(f"config key data.root: data.source {data['source']} needs data.root (the "
                              f"{'table' if data['source'] == 'csv' else 'dataset folder'})")
        need("data.root", data["root"], "file" if data["source"] == "csv" else "folder")
    if data["chexpert"]["reports"]:
        need("data.chexpert.reports", data["chexpert"]["reports"], "file")
    spacy_model = cfg["parse_reports"]["spacy_model"]
    if spacy_model and not Path(spacy_model).is_dir():
        installed = "/" not in spacy_model and importlib.util.find_spec(spacy_model.replace("-", "_")) is not None
        if not installed:
            raise ConfigError(f"config key parse_reports.spacy_model: {spacy_model} is neither a model folder nor an "
                              f"installed model package")
    seg = cfg["segment"]
    for key in ("weights", "encoder_weights"):
        if seg[key]:
            need(f"segment.{key}", seg[key], "file")
    for i, source in enumerate(seg["train"]):
        need(f"segment.train.{i}.path", source["path"])
    if cfg["evaluate"]["manifests"] and not repository_path(cfg["evaluate"]["manifests"]).is_dir():
        raise ConfigError(f"config key evaluate.manifests: {cfg['evaluate']['manifests']} is not a folder (pinned "
                          f"evaluation sets); \"\" draws the sets afresh")
    for name, bench in cfg["evaluate"]["benchmarks"].items():
        if bench.get("root"):
            need(f"evaluate.benchmarks.{name}.root", bench["root"], "folder")
        if bench.get("images"):
            need(f"evaluate.benchmarks.{name}.images", bench["images"], "folder")
        if bench.get("prompts"):
            need(f"evaluate.benchmarks.{name}.prompts", bench["prompts"], "file")


def _check_model(key: str, name: str, weights: str | None = None, weights_key: str = "") -> None:
    """A model name must resolve locally (our JSON, open_clip's, or a local-dir folder with its config and, where
    weights are wanted (`weights` not None) and no file is named, its own weights)."""
    try:
        model_spec.input_spec(name)
        if model_spec.local_dir(name) and weights == "":
            model_spec.folder_weights(name)
    except ValueError as e:
        raise ConfigError(f"config key {key}: {e}") from None
    if weights and not Path(weights).is_file():
        raise ConfigError(f"config key {weights_key}: {weights} is not a file")


def _check_init(key: str, init: str) -> None:
    if init not in ("teacher", "scratch") and not Path(init).is_file():
        raise ConfigError(f"config key {key}: {init} is neither teacher, scratch nor a weights file")


def seeded_runs(cfg: dict) -> list[str]:
    """Every run to train: evaluate.runs, plus `student@k` and `<control>@k` for the seeds k = 1 .. seeds - 1."""
    ev = cfg["evaluate"]
    extra = [f"{name}@{k}" for name in ("student", ev["control"]) for k in range(1, ev["seeds"])]
    return list(ev["runs"]) + extra


def pretraining_shards(cfg: dict) -> int:
    """How many shards the pretraining cohort (the `pretraining` section) is written in."""
    return -(-cfg["films"] // cfg["shard_size"])


def seed_replicas(cfg: dict, name: str) -> list[str]:
    """The runs that are `name` under each seed: [name, name@1, ...] for student and the control, else [name]."""
    if name not in ("student", cfg["evaluate"]["control"]):
        return [name]
    return [name] + [f"{name}@{k}" for k in range(1, cfg["evaluate"]["seeds"])]


def run_config(cfg: dict, name: str) -> dict:
    """The train section of one run: train's values with the run's overrides from evaluate.runs (coerced);
    `run@k` is run under the seed train.seed + k."""
    schema = load_schema()["properties"]["train"]
    base, _, k = name.partition("@")
    if base not in cfg["evaluate"]["runs"] or (k and name not in seeded_runs(cfg)):
        raise ConfigError(f"run {name} is not a run of evaluate.runs (runs: {', '.join(seeded_runs(cfg))})")
    overrides = cfg["evaluate"]["runs"][base]
    run = {**cfg["train"], **_coerce(overrides, schema)}
    if k:
        run["seed"] = run["seed"] + int(k)
    return run


def load(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config (the default one when `path` is None), merge `overrides`, validate."""
    with open(path or DEFAULT_CONFIG) as f:
        cfg = yaml.safe_load(f) or {}
    if overrides:
        cfg = merge(cfg, overrides)
    return validate(cfg)


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def canonical_json(section: Any) -> str:
    """The JSON that a stage's config hash is taken over: sorted keys, no spaces."""
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def config_sha256(section: Any) -> str:
    return hashlib.sha256(canonical_json(section).encode()).hexdigest()
