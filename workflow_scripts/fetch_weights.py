"""Fetch ImageNet ResNet-101 or DeepLabV3-ResNet101 weights, checking the sha256 prefix in the file
name (rule fetch_weights)."""

import argparse
import logging
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.data.download import download_file, hash_prefix_from_name
from rmi.models.backbones import torchvision_weights

log = logging.getLogger("fetch_weights")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", required=True, choices=["resnet101", "deeplab101"])
    p.add_argument("--out", required=True, type=Path, help="weights file to write (.pth)")
    p.add_argument("--url", default=None, help="override torchvision's URL (a mirror; file:// works)")
    a = p.parse_args(argv)
    url = a.url or torchvision_weights(a.backbone).url
    prefix = hash_prefix_from_name(url)
    if prefix is None:
        log.warning("%s carries no '-<sha256 prefix>.' in its name: the download cannot be verified", url)
    download_file(url, a.out, sha256_prefix=prefix)


if __name__ == "__main__":
    run_cli(main)
