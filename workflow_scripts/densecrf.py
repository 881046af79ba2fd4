"""DenseCRF-refine every prediction of a split with the official parameters (rule densecrf)."""

import argparse
import json
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.crf import CRFParams, refine_file


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pred", required=True, type=Path, help="logits prediction file (rule predict)")
    p.add_argument("--cache", required=True, type=Path, help="the split's cache (padded RGB images)")
    p.add_argument("--params", required=True, help="JSON: the config's crf settings")
    p.add_argument("--threads", type=int, default=1, help="worker processes")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    refine_file(a.pred, a.cache, a.out, CRFParams.from_dict(json.loads(a.params)), threads=a.threads)


if __name__ == "__main__":
    run_cli(main)
