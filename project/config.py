"""YAML config files as argparse defaults, overridable on the command line, saved per run."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import yaml

from project.fileio import atomic_write_text


def comma_floats(text: str) -> list[float]:
    """An argparse type: '1,0.5,2' -> [1.0, 0.5, 2.0]."""
    return [float(v) for v in str(text).split(",")]


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv`; keys of the YAML named by `--config` become defaults the command line overrides."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        if not known.config.is_file():
            parser.error(f"config file {known.config} not found")
        raw = yaml.safe_load(known.config.read_text()) or {}
        defaults = {key.replace("-", "_"): value for key, value in raw.items()}
        destinations = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - destinations)
        if unknown:
            parser.error(f"{known.config}: unknown key(s) {unknown}")
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def save_args(args: argparse.Namespace, path: Path) -> None:
    values = {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())}
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=True))
