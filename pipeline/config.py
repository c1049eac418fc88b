"""Workflow config: schema validation with defaults, type coercion, and per-stage sections.

The schema lives in `workflow/schemas/config.schema.yaml`; every section rejects unknown keys so a typo
stops the run before any job starts. Snakemake's `--config a=b` gives nested values as strings, so values
are coerced to the schema's type (YAML syntax) before validation.
"""

from __future__ import annotations

import copy
import hashlib
import json
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


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


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
    return cfg


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
    overrides = cfg["evaluate"]["runs"].get(base, {})
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
