import pytest

from pipeline import config


def test_default_config_is_valid_and_filled():
    cfg = config.load()
    assert cfg["data"]["source"] == "synthetic"
    assert cfg["normalize"]["size"] == 256
    # defaults from the schema appear even where config.yaml is silent
    assert cfg["data"]["synthetic"]["prevalence"]["pneumothorax"] == pytest.approx(0.15)
    assert cfg["data"]["chexpert"]["reports"] == ""


def test_typo_is_rejected_naming_the_key():
    with pytest.raises(config.ConfigError, match=r"normalize.*'sise' was unexpected"):
        config.load(overrides={"normalize": {"sise": 128}})
    with pytest.raises(config.ConfigError, match=r"config key \(top level\).*'normalise'"):
        config.load(overrides={"normalise": {"size": 128}})


def test_wrong_type_is_rejected_naming_the_key():
    with pytest.raises(config.ConfigError, match=r"config key data.shard_size: 'many' is not of type 'integer'"):
        config.load(overrides={"data": {"shard_size": "many"}})
    with pytest.raises(config.ConfigError, match=r"normalize.voi"):
        config.load(overrides={"normalize": {"voi": "histogram"}})


def test_command_line_strings_are_coerced():
    cfg = config.load(overrides={"data": {"shard_size": "32", "views": "[PA, LATERAL]"},
                                 "normalize": "{size: 128, write_png: 'false'}"})
    assert cfg["data"]["shard_size"] == 32
    assert cfg["data"]["views"] == ["PA", "LATERAL"]
    assert cfg["normalize"]["size"] == 128 and cfg["normalize"]["write_png"] is False


def test_split_fractions_must_add_to_one():
    with pytest.raises(config.ConfigError, match="data.split"):
        config.load(overrides={"data": {"split": {"train": 0.9, "validate": 0.1, "test": 0.1}}})


def test_config_hash_ignores_key_order():
    assert config.config_sha256({"a": 1, "b": [1, 2]}) == config.config_sha256({"b": [1, 2], "a": 1})
    assert config.config_sha256({"a": 1}) != config.config_sha256({"a": 2})


def test_percentiles_in_the_wrong_order_are_rejected():
    with pytest.raises(config.ConfigError, match=r"normalize.percentile: \[99, 1\] must be \[low, high\]"):
        config.load(overrides={"normalize": {"percentile": [99, 1]}})
    with pytest.raises(config.ConfigError, match="studies_per_patient"):
        config.load(overrides={"data": {"synthetic": {"studies_per_patient": [3, 1]}}})
    with pytest.raises(config.ConfigError, match=r"pretraining.seed: 1234 is data.synthetic.seed too"):
        config.load(overrides={"pretraining": {"seed": 1234}})
    with pytest.raises(config.ConfigError, match=r"data.scrub_reports.0: '\(Dr' is not a regular expression"):
        config.load(overrides={"data": {"scrub_reports": ["(Dr"]}})
    few = {"batch_size": 8, "accumulate": 2, "nproc_per_node": 4}
    with pytest.raises(config.ConfigError, match=r"evaluate.runs.no_roi.batch_size: 8 examples split over "
                                                 r"accumulate 2 x nproc_per_node 4 leaves fewer than 2"):
        config.load(overrides={"evaluate": {"runs": {"no_roi": few}}})


@pytest.mark.parametrize("overrides, message", [
    ({"data": {"source": "csv"}}, "data.root: data.source csv needs data.root"),
    ({"data": {"source": "csv", "root": "no/such/table.csv"}}, "data.root: no/such/table.csv is not a file"),
    ({"data": {"source": "mimic-cxr", "root": "no/such/mimic"}}, "data.root: no/such/mimic is not a folder"),
    ({"data": {"chexpert": {"reports": "no/plus.csv"}}}, "data.chexpert.reports"),
    ({"segment": {"weights": "no/unet.pt"}}, "segment.weights: no/unet.pt is not a file"),
    ({"segment": {"encoder_weights": "no/enc.pt"}}, "segment.encoder_weights"),
    ({"segment": {"train": [{"format": "chexmask", "path": "no/MIMIC-CXR-JPG.csv.gz"}]}}, "segment.train.0.path"),
    ({"parse_reports": {"spacy_model": "en_core_sci_smm"}}, "parse_reports.spacy_model: en_core_sci_smm is neither"),
    ({"parse_reports": {"spacy_model": "models/en_core_sci_sm"}}, "parse_reports.spacy_model"),
    ({"evaluate": {"manifests": "workflow/manifests/synthetic-defualt"}}, "evaluate.manifests: .* is not a folder"),
    ({"evaluate": {"benchmarks": {"ms_cxr": {"root": "no/ms-cxr"}}}}, "evaluate.benchmarks.ms_cxr.root"),
])
def test_a_path_in_config_that_does_not_exist_is_rejected_before_any_job(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(overrides=overrides)


def test_existing_paths_pass(tmp_path):
    (tmp_path / "t.csv").write_text("image_path,patient_id,study_id\n")
    (tmp_path / "unet.pt").write_bytes(b"")
    (tmp_path / "spacy").mkdir()
    cfg = config.load(overrides={"data": {"source": "csv", "root": str(tmp_path / "t.csv")},
                                 "segment": {"weights": str(tmp_path / "unet.pt")},
                                 "parse_reports": {"spacy_model": str(tmp_path / "spacy")}})
    assert cfg["data"]["root"] == str(tmp_path / "t.csv")
    assert config.load(overrides={"parse_reports": {"spacy_model": "pytest"}})  # an installed package name


def test_an_unknown_run_name_is_rejected():
    cfg = config.load()
    assert config.run_config(cfg, "student@2")["seed"] == cfg["train"]["seed"] + 2
    for name in ("nosuchrun", "no_roi@1", "student@3"):
        with pytest.raises(config.ConfigError, match=f"run {name} is not a run of evaluate.runs"):
            config.run_config(cfg, name)


def test_the_workflow_refuses_an_unknown_run_target_and_a_bad_value_before_any_job(tmp_path):
    from conftest import run_snakemake

    proc = run_snakemake(tmp_path, "-n", "results/train/nosuchrun/model.pt", check=False)
    assert proc.returncode != 0 and "results/train/nosuchrun/model.pt" in proc.stdout + proc.stderr
    proc = run_snakemake(tmp_path, "-n", "train", "--config", "normalize={percentile: [99, 1]}", check=False)
    assert proc.returncode != 0 and "normalize.percentile" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_the_workflow_plans_without_importing_torch_or_spacy():
    """The Snakefile's own imports (common.smk) stay light: every snakemake call, a dry run too, pays them."""
    import re
    import subprocess
    import sys

    common = (config.ROOT / "workflow" / "rules" / "common.smk").read_text()
    imports = "\n".join(line for line in common.splitlines() if re.match(r"(from|import) ", line))
    code = imports + "\nimport sys\nprint(sorted(m for m in ('torch', 'spacy', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=config.ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # the schema is parsed once per process, and each caller gets its own copy
    a = config.load_schema()
    a["properties"].clear()
    assert config.load_schema()["properties"]
