"""Train the BI-RADS classifier (MyConvNeXt): `python train_cls/train_cls.py --data DIR --out RUN`."""

import sys

from project.training import run

if __name__ == "__main__":
    run(sys.argv[1:], "cla")
