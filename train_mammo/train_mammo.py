"""Train the mammography cancer classifier: `python train_mammo/train_mammo.py --data PREPARED --out RUN`."""

import sys

from project.mammo.train import main

if __name__ == "__main__":
    main(sys.argv[1:])
