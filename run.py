"""Predict testB into cla_pre.csv and fea_pre.csv: `python run.py` (see `python run.py --help`)."""

import sys

from project.testb import main

if __name__ == "__main__":
    sys.exit(main())
