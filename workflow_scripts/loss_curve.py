"""Training curve of one model from its train_log.csv (rule loss_curve)."""

import argparse
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.figures import loss_curve


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--log", required=True, type=Path, help="train_log.csv (step, loss, lr, time)")
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    loss_curve(a.log, a.out, a.title)


if __name__ == "__main__":
    run_cli(main)
