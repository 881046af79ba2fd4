"""Language-blind baselines that a referring model has to beat (``results/baselines.csv``).

For every expression of a cached split, a prediction that ignores the expression:

* ``largest object``: the mask of the largest annotated (non-crowd) object of the image, from the
  dataset's own instance annotations (an oracle instance segmenter choosing by size); refer-layout
  datasets only;
* ``centre box``: a centred box covering a share of each side; the best share of ``BOX_SHARES`` on
  the split itself (so the box is an optimistic prior).

Scored at the original resolution with the project's metrics (``rmi.metrics``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rmi.data.cache import CacheReader
from rmi.data.refer import split_images
from rmi.metrics import intersection_union, summarize

BOX_SHARES = (0.2, 0.35, 0.5, 0.65, 0.8)


def centre_box(height: int, width: int, share: float) -> np.ndarray:
    """``(height, width) bool``: the centred box covering ``share`` of each side."""
    box = np.zeros((height, width), bool)
    dy, dx = int(height * (1 - share) / 2), int(width * (1 - share) / 2)
    box[dy : height - dy, dx : width - dx] = True
    return box


def _frame(cache: CacheReader, predict) -> pd.DataFrame:
    """Per-expression I/U of ``predict(row) -> (h, w) bool`` against the cache's original masks."""
    iu = np.array([intersection_union(predict(i), cache.original_mask(i)) for i in range(len(cache))]).reshape(-1, 2)
    return pd.DataFrame({"intersection": iu[:, 0], "union": iu[:, 1], "iou": iu[:, 0] / np.maximum(iu[:, 1], 1)})


def box_prior(cache: CacheReader) -> tuple[float, pd.DataFrame]:
    """``(best share, metrics frame)`` of the centred-box baseline on the cache's split."""
    frames = {s: _frame(cache, lambda i, s=s: centre_box(*cache.original_size(i), s)) for s in BOX_SHARES}
    best = max(frames, key=lambda s: frames[s]["intersection"].sum() / max(1, frames[s]["union"].sum()))
    return best, frames[best]


def largest_object(cache: CacheReader, source: dict, split: str) -> pd.DataFrame:
    """Metrics frame of the largest-object baseline; ``source`` = ``{"refer_dir", "split_by", "image_dir"}``."""
    largest = {}
    for item in split_images(source["refer_dir"], source["split_by"], source["image_dir"], split):
        masks = [mask.decode() for _, _, mask, crowd in item.objects if not crowd]
        largest[item.image_id] = max(masks, key=lambda m: int(m.sum()))
    image_id = cache.file["image_id"][()]
    return _frame(cache, lambda i: largest[int(image_id[cache.image_index[i]])])


def baseline_rows(dataset: str, split: str, cache_path, source: dict, thresholds) -> list[dict]:
    """Rows ``dataset, split, baseline, n, oIoU, mIoU, prec@X`` (x 100) of every baseline the source allows."""
    cache = CacheReader(cache_path)
    share, box = box_prior(cache)
    frames = {f"centre box ({share:.0%} of each side)": box}
    if source.get("format") == "refer":
        frames["largest object"] = largest_object(cache, source, split)
    rows = []
    for name, frame in frames.items():
        summary = summarize(frame, thresholds)
        rows.append(
            {"dataset": dataset, "split": split, "baseline": name, "n": summary.pop("n")}
            | {
                k.replace("overall_iou", "oIoU").replace("mean_iou", "mIoU"): round(100 * v, 2)
                for k, v in summary.items()
            }
        )
    return rows
