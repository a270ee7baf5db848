"""pyproject.toml and environment.yml name the same dependencies; the Makefile pins torch."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip |= {_name(r) for r in entry["pip"] if not r.startswith("-")}
        elif _name(entry) not in ("python", "pip"):
            conda.add(_name(entry))
    assert conda | pip == declared
    assert conda.isdisjoint(pip)


def test_constraints_pin_torch_and_torchvision() -> None:
    pins = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins == {"torch": "2.14.1", "torchvision": "0.29.1"}
    env_pip = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"][-1]["pip"]
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(env_pip)
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
