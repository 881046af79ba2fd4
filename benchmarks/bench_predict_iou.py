"""What a user sees from ``rmi predict``: every expression of the images named, run through the
console command as a user runs it, its mask scored against the ground truth of the dataset.

    .venv/bin/python benchmarks/bench_predict_iou.py [--dataset results/data/shapes] \\
        [--model results/models/shapes/tiny_rmi/model.pt] [--images 1 2001 2002 2101] \\
        [--out benchmarks/results/predict_iou_cpu.jsonl]

``--dataset``: a RefCOCO-layout directory (``refs(unc).p``, ``instances.json``, ``images/``), by
default the demo's ``shapes`` set; image 1 is its first training image, 2001 and 2002 the first of
val, 2101 the first of testA. Each expression runs twice, without and with ``--crf``. One JSON line
per (expression, setting): image, split, ref, expression, ``crf``, IoU (on the image's original
pixels) and the share of the image the mask covers; then one line per setting: the number of
expressions, the mean IoU and how many reach 0.8.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from rmi.data.refer import load_refer, read_refs
from rmi.metrics import intersection_union

RMI = Path(sys.executable).with_name("rmi")


def expressions_of(dataset: Path, image_ids: list[int]) -> list:
    """The ``Expression`` records of ``image_ids`` (every split), in the images' order, then the refs'."""
    splits = sorted({str(r["split"]) for r in read_refs(dataset / "refs(unc).p")})
    records = [e for s in splits for e in load_refer(dataset, "unc", dataset / "images", s)]
    found = {e.image_id for e in records}
    if missing := [i for i in image_ids if i not in found]:
        raise SystemExit(f"{dataset}: no expression on image(s) {missing}")
    return [e for i in image_ids for e in records if e.image_id == i]


def predict_mask(model: Path, image: Path, expression: str, crf: bool, out: Path) -> np.ndarray:
    """``rmi predict``'s mask ``(h, w) bool`` for one expression (the console command, a subprocess)."""
    args = [str(RMI), "predict", "--model", str(model), "--image", str(image), "--expression", expression]
    subprocess.run([*args, "--out", str(out), *(["--crf"] if crf else [])], check=True, capture_output=True)
    return np.asarray(Image.open(out)) > 127


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=Path("results/data/shapes"))
    p.add_argument("--model", type=Path, default=Path("results/models/shapes/tiny_rmi/model.pt"))
    p.add_argument("--images", type=int, nargs="+", default=[1, 2001, 2002, 2101])
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines to this file")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for record in expressions_of(a.dataset, a.images):
            truth = record.mask.decode()
            for crf in (False, True):
                mask = predict_mask(a.model, record.image_path, record.sentence, crf, Path(tmp) / "mask.png")
                inter, union = intersection_union(mask, truth)
                rows.append(
                    {
                        "bench": "predict_iou",
                        "image": record.image_id,
                        "split": record.split,
                        "ref": record.ref_id,
                        "expression": record.sentence,
                        "crf": crf,
                        "iou": round(inter / max(1, union), 3),
                        "foreground": round(float(mask.mean()), 3),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    for crf in (False, True):
        ious = [r["iou"] for r in rows if r["crf"] == crf]
        summary = {
            "bench": "predict_iou_summary",
            "model": str(a.model),
            "images": a.images,
            "crf": crf,
            "expressions": len(ious),
            "mean_iou": round(float(np.mean(ious)), 3),
            "iou>=0.8": sum(i >= 0.8 for i in ious),
        }
        rows.append(summary)
        print(json.dumps(summary), flush=True)
    if a.out:
        with a.out.open("a") as out:
            out.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
