"""Render a generated dataset (shapes / shapes+) in the RefCOCO file layout (rule generate_shapes)."""

import argparse
import json
import logging
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.data.shapes import generate

log = logging.getLogger("generate_shapes")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", required=True, help="JSON: the config's datasets.<name>.generator")
    p.add_argument("--out-dir", required=True, type=Path, help="replaced atomically")
    p.add_argument("--threads", type=int, default=1, help="processes drawing the images (same files for any number)")
    a = p.parse_args(argv)
    summary = generate(json.loads(a.params), a.out_dir, workers=a.threads)
    for split, counts in summary.items():
        log.info("%s: %s", split, counts)


if __name__ == "__main__":
    run_cli(main)
