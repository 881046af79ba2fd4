"""Language-blind baselines (largest object, centred box) of every evaluated split (rule baselines)."""

import argparse
import json
from pathlib import Path

import pandas as pd

from rmi.baselines import baseline_rows
from rmi.cli.common import run_cli
from rmi.fileio import write_text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--splits", required=True, help='JSON list of {"dataset", "split", "cache", "source"}')
    p.add_argument("--thresholds", required=True, type=float, nargs="+", help="IoU thresholds of prec@X")
    p.add_argument("--out", required=True, type=Path, help="baselines.csv")
    a = p.parse_args(argv)
    rows = [
        row
        for s in json.loads(a.splits)
        for row in baseline_rows(s["dataset"], s["split"], s["cache"], s["source"], a.thresholds)
    ]
    write_text(a.out, pd.DataFrame.from_records(rows).to_csv(index=False))


if __name__ == "__main__":
    run_cli(main)
