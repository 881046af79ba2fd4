"""One split of a dataset as an HDF5 cache: padded images, token ids, masks (rule cache)."""

import argparse
import json
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.data.cache import build_cache
from rmi.data.sources import load_split
from rmi.text import Vocab


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", required=True, help="JSON loader spec (rules/common.smk: dataset_source)")
    p.add_argument("--split", required=True)
    p.add_argument("--vocab", required=True, type=Path, help="vocab.txt from rule vocab")
    p.add_argument("--image-size", required=True, type=int, help="S: images are resized and padded to S x S")
    p.add_argument("--max-tokens", required=True, type=int, help="T: token ids per expression (left-padded)")
    p.add_argument("--dataset", required=True, help="dataset name (stored in the cache attributes)")
    p.add_argument(
        "--role",
        required=True,
        choices=("train", "eval"),
        help="train: expressions without a word or with a bad mask are skipped (counted); eval: every one is kept",
    )
    p.add_argument("--out", required=True, type=Path, help="the cache file (.h5)")
    a = p.parse_args(argv)
    records = load_split(json.loads(a.source), a.split)
    vocab = Vocab.load(a.vocab)
    build_cache(
        records, vocab, a.out, a.image_size, a.max_tokens, dataset=a.dataset, split=a.split, train=a.role == "train"
    )


if __name__ == "__main__":
    run_cli(main)
