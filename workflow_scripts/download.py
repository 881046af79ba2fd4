"""Download one entry of config["downloads"] into data/<name>/, verified and unpacked (rule download)."""

import argparse
import json
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.data.download import fetch_entry


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--spec", required=True, help='JSON: {"files": [{"url", "sha256" | "md5", "unpack"}, ...]}')
    p.add_argument("--out", required=True, type=Path, help="directory to create (must not exist or be empty)")
    a = p.parse_args(argv)
    fetch_entry(json.loads(a.spec), a.out)


if __name__ == "__main__":
    run_cli(main)
