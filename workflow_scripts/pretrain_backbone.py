"""Pretrain a backbone's trunk on the training images of the generated sets (rule pretrain_backbone)."""

import argparse
import json
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.pretrain import TASKS, pretrain_trunk


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", required=True, choices=sorted(TASKS), help="its default task: TASKS")
    p.add_argument("--sources", required=True, help='JSON list of {"refer_dir", "split_by", "image_dir", "split"}')
    p.add_argument("--widths", default="null", help="JSON: the tiny trunk's three stage widths (null: the default)")
    p.add_argument("--image-size", required=True, type=int, help="S: images are resized and padded to S x S")
    p.add_argument(
        "--params",
        required=True,
        help='JSON: {"steps", "batch_size", "lr"[, "task", "pooling", "object_size", "extent", "precision"]}'
        " (backbones.<name>.pretrain)",
    )
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--threads", required=True, type=int)
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--out", required=True, type=Path, help="the trunk's weights (.pth)")
    a = p.parse_args(argv)
    params = json.loads(a.params)
    pretrain_trunk(
        a.backbone,
        json.loads(a.sources),
        a.out,
        image_size=a.image_size,
        steps=params["steps"],
        batch_size=params["batch_size"],
        lr=params["lr"],
        widths=json.loads(a.widths),
        seed=a.seed,
        threads=a.threads,
        device=a.device,
        task=params.get("task"),
        pooling=params.get("pooling", "avg"),
        object_size=params.get("object_size"),
        extent=params.get("extent", False),
        precision=params.get("precision", "auto"),
    )


if __name__ == "__main__":
    run_cli(main, gpu=True)
