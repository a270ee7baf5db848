"""Train the lesion-feature recogniser (MyDenseNet): `python train_fea/train_binary.py --data DIR --out RUN`."""

import sys

from project.training import run

if __name__ == "__main__":
    run(sys.argv[1:], "fea")
