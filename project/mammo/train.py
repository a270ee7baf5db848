"""Mammography training, `python -m project.mammo.train --data PREPARED --out RUN`: the 'mammo' task in the engine."""

from __future__ import annotations

from collections.abc import Sequence

from project.mammo.predict import TASK
from project.training import run


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train as the command line says (see --help); the best epoch's metrics."""
    return run(argv, TASK)


if __name__ == "__main__":
    main()
