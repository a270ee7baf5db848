"""Self-describing checkpoints: safetensors weights with the JSON config in the file's header."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

import project
from project.fileio import atomic_write_bytes
from project.models.factory import create_model

FORMAT_VERSION = 1
CONFIG_KEY = "config"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not describe itself."""


@dataclass
class CheckpointConfig:
    """What a checkpoint carries besides its weights; enough to predict with no other flag."""

    task: str
    model_name: str
    model_kwargs: dict
    labels: list[str]
    preprocess: dict
    thresholds: dict[str, float] = field(default_factory=dict)
    auxiliary: dict = field(default_factory=dict)  # an auxiliary head's column and classes; empty: none
    metrics: dict = field(default_factory=dict)
    epoch: int | None = None
    code_version: str = ""
    created: str = ""
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(project.__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{project.__version__}+{commit}" if commit else project.__version__


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, config: CheckpointConfig) -> None:
    config.code_version = config.code_version or code_version()
    config.created = config.created or datetime.now(UTC).isoformat(timespec="seconds")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={CONFIG_KEY: config.to_json()}))


def read_config(path: str | os.PathLike) -> CheckpointConfig:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path}: no '{CONFIG_KEY}' in the safetensors header; not written by this toolkit")
    raw = json.loads(metadata[CONFIG_KEY])
    if raw.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {raw.get('format')}, this code reads {FORMAT_VERSION}")
    return CheckpointConfig(**raw)


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, CheckpointConfig]:
    """The model, rebuilt from its recorded name and kwargs, in eval mode, and its config."""
    config = read_config(path)
    model = create_model(config.model_name, **config.model_kwargs)
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval(), config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print what a checkpoint says about itself.")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    for path in parser.parse_args(argv).checkpoints:
        print(json.dumps(read_config(path).__dict__, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
