"""Train the mammography patch classifier: `python train_mammo/train_patches.py --data PATCHES --out RUN`."""

import sys

from project.tasks.mammo_patch import PATCH_TASK
from project.training import run

if __name__ == "__main__":
    run(sys.argv[1:], PATCH_TASK)
