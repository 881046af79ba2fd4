"""Table 1, precision@X, the length tables and the comparison with the paper (rule tables)."""

import argparse
import json
import logging
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.tables import write_tables

log = logging.getLogger("tables")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--spec", required=True, help="JSON (rules/common.smk: table_spec)")
    p.add_argument(
        "--metrics",
        required=True,
        help="JSON {dataset: {split: {model: metrics csv}}} (rules/common.smk: metric_files)",
    )
    p.add_argument("--out-dir", required=True, type=Path)
    a = p.parse_args(argv)
    tables = write_tables(json.loads(a.spec), json.loads(a.metrics), a.out_dir)
    log.info("table1:\n%s", tables["table1.csv"].to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
