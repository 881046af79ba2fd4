"""Where the demo's models miss: every expression of a split of a finished run, its IoU (the
pipeline's metrics file) broken down by what the expression says and what its target looks like.

    .venv/bin/python benchmarks/bench_failures.py [--results results] [--datasets shapes shapes+] \\
        [--split val] [--models tiny_lstm tiny_rmi tiny_rmi_dcrf] [--out benchmarks/results/failures_cpu.jsonl]

Reads, under ``--results`` (a run's ``results_dir``): the generated data (``data/{dataset}``), the
per-expression IoU of each model (``metrics/{dataset}/{model}/{split}.csv``) and, for a model whose
predictions are logits (not ``*_dcrf``), the predictions and the cache (``predictions/``, ``cache/``).
A hit is IoU >= 0.5 (prec@0.5). One JSON line per (dataset, model): the share of hits

* overall;
* by what tells the target apart (``kind``), read off the ref's shortest expression (its minimal
  description; the longer ones add true but redundant words, "next to the blue star"): a location word
  (``LOCATION_WORDS``), else a size word (``SIZE_WORDS``), else a colour name, else the category alone
  ("the ring shape");
* by the target's visible area as a share of the image, in quartiles (``area_quartiles``: the upper
  bounds; ``hits_by_area``: the share of hits per quartile);
* by the target's contrast: the distance between the mean RGB of its pixels and of the background
  pixels (no object) within ``BAND_PX`` pixels around it; below ``LOW_CONTRAST`` = low;

and, for a logits model, among the misses: the share with no positive cell (an empty mask) and the
share whose highest logit (upsampled, padded S x S) lies on the target: the model found the object,
but its mask came out too faint or took in another shape too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import binary_dilation

from rmi.data.cache import CacheReader, load_image
from rmi.data.refer import load_refer, split_images
from rmi.data.shapes import COLOURS, LOCATION_WORDS
from rmi.prediction_file import PredictionReader
from rmi.text import tokenize

SIZE_WORDS = frozenset({"big", "small", "bigger", "smaller"})
BAND_PX = 4
LOW_CONTRAST = 50.0
HIT = 0.5


def expression_kind(sentence: str) -> str:
    """``location``, ``size``, ``colour`` or ``category``: the first kind of word the sentence uses."""
    words = set(tokenize(sentence))
    if words & LOCATION_WORDS:
        return "location"
    if words & SIZE_WORDS:
        return "size"
    if words & set(COLOURS):
        return "colour"
    return "category"


def contrast(image: np.ndarray, target: np.ndarray, objects: np.ndarray) -> float:
    """RGB distance between the mean of ``target (h, w) bool`` in ``image (h, w, 3)`` and the mean of the
    background (outside ``objects (h, w) bool``, the union of every object) within ``BAND_PX`` of it;
    NaN where under 20 background pixels surround the target."""
    band = binary_dilation(target, iterations=BAND_PX) & ~objects
    if np.count_nonzero(band) < 20:
        return float("nan")
    rgb = image.astype(np.float64)
    return float(np.linalg.norm(rgb[target].mean(0) - rgb[band].mean(0)))


def targets(data: Path, split: str) -> pd.DataFrame:
    """One row per expression of ``split``: ``sent_id``, ``kind`` (of its ref), ``area`` (the target's
    share of the image) and ``contrast``."""
    images = {i.image_id: i for i in split_images(data, "unc", data / "images", split)}
    refs: dict[int, list] = {}
    for e in load_refer(data, "unc", data / "images", split):
        refs.setdefault(e.ref_id, []).append(e)
    rows = []
    for records in refs.values():
        first = records[0]
        image = load_image(first.image_path)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, -1)
        truth = first.mask.decode()
        objects = np.any([m.decode() for _, _, m, _ in images[first.image_id].objects], axis=0)
        kind = expression_kind(min(records, key=lambda e: len(tokenize(e.sentence))).sentence)
        target = {"kind": kind, "area": truth.mean(), "contrast": contrast(image, truth, objects)}
        rows += [{"sent_id": e.sent_id, **target} for e in records]
    return pd.DataFrame(rows)


def miss_causes(results: Path, dataset: str, model: str, split: str, misses: set[int]) -> dict:
    """Among the ``misses`` (sent ids) of a logits model: the share with an empty mask and the share
    whose strongest cell lies on the target."""
    cache = CacheReader(results / "cache" / dataset / f"{split}.h5")
    with PredictionReader(results / "predictions" / dataset / model / f"{split}.h5") as pred:
        row_of = {int(s): i for i, s in enumerate(pred.sent_id)}
        empty = on_target = n = 0
        for row in range(len(cache)):
            sent = int(cache.sent_id[row])
            if sent not in misses:
                continue
            logits = pred.padded_logits(row_of[sent])
            n += 1
            empty += not pred.padded_mask(row_of[sent]).any()
            on_target += bool(cache.padded_mask(row).ravel()[logits.argmax()])
    return {"misses": n, "empty": round(empty / max(1, n), 3), "peak_on_target": round(on_target / max(1, n), 3)}


def analyse(results: Path, dataset: str, split: str, models: list[str]) -> list[dict]:
    """The JSON lines of one dataset (see the module doc)."""
    frame = targets(results / "data" / dataset, split)
    frame["quartile"], bounds = pd.qcut(frame["area"], 4, labels=False, retbins=True)
    out = []
    for model in models:
        scores = pd.read_csv(results / "metrics" / dataset / model / f"{split}.csv")
        d = frame.merge(scores[["sent_id", "iou"]], on="sent_id", validate="one_to_one")
        d["hit"] = d["iou"] >= HIT
        low = d["contrast"] < LOW_CONTRAST
        line = {
            "bench": "failures",
            "results": str(results),
            "dataset": dataset,
            "split": split,
            "model": model,
            "n": len(d),
            "hits": round(float(d["hit"].mean()), 3),
            "hits_by_kind": {k: round(float(v), 3) for k, v in d.groupby("kind")["hit"].mean().items()},
            "n_by_kind": {k: int(v) for k, v in d["kind"].value_counts().sort_index().items()},
            "area_quartiles": [round(float(b), 3) for b in bounds[1:]],
            "hits_by_area": [round(float(v), 3) for v in d.groupby("quartile")["hit"].mean()],
            "low_contrast": int(low.sum()),
            "hits_low_contrast": round(float(d.loc[low, "hit"].mean()), 3) if low.any() else None,
            "hits_other": round(float(d.loc[~low, "hit"].mean()), 3),
        }
        if not model.endswith("_dcrf"):
            line |= miss_causes(results, dataset, model, split, set(d.loc[~d["hit"], "sent_id"].astype(int)))
        out.append(line)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--datasets", nargs="+", default=["shapes", "shapes+"])
    p.add_argument("--split", default="val")
    p.add_argument("--models", nargs="+", default=["tiny_lstm", "tiny_rmi", "tiny_rmi_dcrf"])
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines to this file")
    a = p.parse_args()
    lines = [line for dataset in a.datasets for line in analyse(a.results, dataset, a.split, a.models)]
    for line in lines:
        print(json.dumps(line), flush=True)
    if a.out:
        with a.out.open("a") as out:
            out.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
