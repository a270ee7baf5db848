"""Every recipe in configs/ parses with the trainer it is written for: no unknown or misspelt key."""

from __future__ import annotations

from pathlib import Path

import pytest

from project.config import parse_with_config
from project.training import build_parser

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _task(config: Path) -> str:
    if "mammo" in config.stem:
        return "mammo_patch" if "mammo_patch" in config.stem else "mammo"
    return "fea" if "fea" in config.stem else "cla"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_the_recipe_parses_with_its_trainer(config: Path) -> None:
    args = parse_with_config(build_parser(_task(config)), ["--config", str(config), "--data", "d", "--out", "o"])
    assert args.config == config and args.epochs > 0


def test_a_flag_the_config_switches_on_can_be_switched_off_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text("oversample: true\npretrained: true\n")
    argv = ["--config", str(config), "--data", "d", "--out", "o"]
    parser = build_parser("cla")
    assert parse_with_config(parser, argv).oversample is True
    args = parse_with_config(build_parser("cla"), [*argv, "--no-oversample", "--no-pretrained"])
    assert args.oversample is False and args.pretrained is False
