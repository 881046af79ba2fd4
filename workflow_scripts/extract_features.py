"""Cache the frozen trunk's features of one split, fp16 HDF5 (rule extract_features)."""

import argparse
import json
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.features import extract_features


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache", required=True, type=Path, help="split cache (.h5)")
    p.add_argument("--backbone", required=True)
    p.add_argument("--backbone-cfg", required=True, help="JSON: the config's backbones.<name>")
    p.add_argument("--visual-dim", required=True, type=int)
    p.add_argument("--weights", default="", help="pretrained weights file ('' = from the config)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    extract_features(
        a.cache,
        a.out,
        a.backbone,
        json.loads(a.backbone_cfg),
        a.visual_dim,
        weights_path=a.weights or None,
        batch_size=a.batch_size,
        device=a.device,
        threads=a.threads,
    )


if __name__ == "__main__":
    run_cli(main, gpu=True)
