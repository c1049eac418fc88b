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
