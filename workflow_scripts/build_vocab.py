"""Vocabulary of a dataset's training split: <pad> <go> <eos> <unk>, then words by frequency (rule vocab)."""

import argparse
import json
import logging
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.data.sources import load_split
from rmi.text import Vocab

log = logging.getLogger("build_vocab")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", required=True, help="JSON loader spec (rules/common.smk: dataset_source)")
    p.add_argument("--split", required=True, help="the training split")
    p.add_argument("--min-count", required=True, type=int, help="keep words seen at least this often")
    p.add_argument("--out", required=True, type=Path, help="vocab.txt (one word per line)")
    a = p.parse_args(argv)
    records = load_split(json.loads(a.source), a.split)
    vocab = Vocab.build((r.sentence for r in records), min_count=a.min_count)
    vocab.save(a.out)
    log.info("%d expressions of split %s -> %d words -> %s", len(records), a.split, len(vocab), a.out)


if __name__ == "__main__":
    run_cli(main)
