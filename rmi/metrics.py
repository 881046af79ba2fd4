"""Evaluation at the original image resolution: per-expression I and U, overall/mean IoU, prec@X.

As the official ``main.py`` test loop: every expression of the split is scored; its binary
prediction goes back to the ORIGINAL size by ``resize_and_crop`` (``PredictionReader.original_mask``;
the ``logits`` option is the comparison path), and ``I = |pred AND gt|``, ``U = |pred OR gt|``
(``eval_tools.compute_mask_IU``). Overall IoU = sum I / sum U (the paper's "IOU"), mean IoU =
mean of I/U, prec@X = share of expressions with I/U >= X. An expression with U = 0 (empty
prediction and empty ground truth; the official code would divide by zero there) counts as a
perfect match, IoU 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from rmi.data.cache import CacheReader
from rmi.errors import InputError
from rmi.prediction_file import PredictionReader

COLUMNS = ["sent_id", "ref_id", "n_tokens", "intersection", "union", "iou"]


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """``(h, w) bool`` prediction and ground truth -> ``(|pred & gt|, |pred | gt|)``."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def evaluate_split(pred_path: str | Path, cache_path: str | Path, resize: str = "official") -> pd.DataFrame:
    """One row per expression (cache order) with the columns ``COLUMNS``, at original resolution.

    ``resize``: how predictions go back to the original size (``rmi.prediction_file.RESIZE_MODES``).
    """
    cache = CacheReader(cache_path)
    with PredictionReader(pred_path) as pred:
        if not np.array_equal(pred.sent_id, cache.sent_id):
            raise InputError(pred_path, f"its sent_ids do not match those of {cache_path} (stale prediction?)")
        rows = []
        for i in tqdm(range(len(cache)), unit="expr", disable=None, mininterval=2.0):
            inter, union = intersection_union(pred.original_mask(i, resize), cache.original_mask(i))
            rows.append((inter, union))
    iu = np.asarray(rows, np.int64).reshape(-1, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(iu[:, 1] > 0, iu[:, 0] / np.maximum(iu[:, 1], 1), 1.0)
    return pd.DataFrame(
        {
            "sent_id": cache.sent_id,
            "ref_id": cache.ref_id[cache.sent_ref],
            "n_tokens": cache.n_tokens.astype(np.int64),
            "intersection": iu[:, 0],
            "union": iu[:, 1],
            "iou": iou,
        }
    )[COLUMNS]


def overall_iou(frame: pd.DataFrame) -> float:
    """sum I / sum U of the rows of a metrics frame (1.0 if every union is empty)."""
    union = int(frame["union"].sum())
    return float(frame["intersection"].sum()) / union if union else 1.0


def summarize(frame: pd.DataFrame, thresholds: Sequence[float]) -> dict:
    """``{"overall_iou", "mean_iou", "prec@<t>" for each threshold, "n"}`` of a metrics frame."""
    out = {"overall_iou": overall_iou(frame), "mean_iou": float(frame["iou"].mean()) if len(frame) else 0.0}
    for t in thresholds:
        out[f"prec@{t}"] = float((frame["iou"] >= t).mean()) if len(frame) else 0.0
    out["n"] = int(len(frame))
    return out
