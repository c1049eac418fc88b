import tomllib

import yaml

from conftest import ROOT


def test_conda_env_pins_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs" / "pipeline.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip) == sorted(deps)
    assert all("==" in d for d in deps), "every dependency is pinned exactly"
    assert "python=3.11" in env["dependencies"]
