"""Per-expression I/U at the original resolution, and the split's summary (rule evaluate)."""

import argparse
import logging
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.fileio import write_json, write_text
from rmi.metrics import evaluate_split, summarize
from rmi.prediction_file import RESIZE_MODES

log = logging.getLogger("evaluate")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pred", required=True, type=Path, help="prediction file (logits or masks)")
    p.add_argument("--cache", required=True, type=Path, help="the split's cache (original-size masks)")
    p.add_argument("--thresholds", required=True, type=float, nargs="+", help="IoU thresholds of prec@X")
    p.add_argument(
        "--resize", required=True, choices=RESIZE_MODES, help="official: as main.py test(); logits: the comparison"
    )
    p.add_argument("--out-csv", required=True, type=Path)
    p.add_argument("--out-json", required=True, type=Path)
    a = p.parse_args(argv)
    frame = evaluate_split(a.pred, a.cache, a.resize)
    summary = summarize(frame, a.thresholds)
    write_text(a.out_csv, frame.to_csv(index=False))
    write_json(a.out_json, summary)
    log.info("%s: %s", a.pred, summary)


if __name__ == "__main__":
    run_cli(main)
