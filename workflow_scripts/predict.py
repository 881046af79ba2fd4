"""Low-resolution logits for every expression of a cached split (rule predict)."""

import argparse
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.inference import predict_split


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, type=Path, help="model.pt from rule train")
    p.add_argument("--cache", required=True, type=Path, help="split cache (.h5)")
    p.add_argument("--batch-size", required=True, type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    predict_split(a.model, a.cache, a.out, batch_size=a.batch_size, threads=a.threads, device=a.device)


if __name__ == "__main__":
    run_cli(main, gpu=True)
