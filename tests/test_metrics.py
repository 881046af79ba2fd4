"""Metrics: hand-computed I/U, overall vs mean IoU, evaluation at the original resolution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from builders import make_records
from rmi.data.cache import CacheReader, build_cache
from rmi.errors import InputError
from rmi.metrics import COLUMNS, evaluate_split, intersection_union, summarize
from rmi.prediction_file import write_predictions
from rmi.text import Vocab

S = 64


def test_intersection_union_by_hand():
    gt = np.zeros((4, 5), bool)
    gt[1:3, 1:4] = True  # 6 pixels
    pred = np.zeros_like(gt)
    pred[2:4, 2:5] = True  # 6 pixels, 2 shared
    assert intersection_union(pred, gt) == (2, 10)
    assert intersection_union(np.zeros_like(gt), gt) == (0, 6)  # empty prediction
    assert intersection_union(pred, np.zeros_like(gt)) == (0, 6)  # empty ground truth
    assert intersection_union(np.zeros_like(gt), np.zeros_like(gt)) == (0, 0)
    with pytest.raises(ValueError):
        intersection_union(pred, gt[:3])


def test_overall_and_mean_iou_differ():
    # a big object predicted well and a small one missed: overall IoU is dominated by the big one
    frame = pd.DataFrame(
        {
            "sent_id": [1, 2],
            "ref_id": [1, 2],
            "n_tokens": [3, 5],
            "intersection": [90, 0],
            "union": [100, 10],
            "iou": [0.9, 0.0],
        }
    )
    s = summarize(frame, [0.5, 0.9, 0.95])
    assert s["overall_iou"] == pytest.approx(90 / 110)
    assert s["mean_iou"] == pytest.approx(0.45)
    assert s["prec@0.5"] == 0.5 and s["prec@0.9"] == 0.5 and s["prec@0.95"] == 0.0 and s["n"] == 2


@pytest.fixture
def cache(tmp_path):
    records = make_records(tmp_path / "images")
    vocab = Vocab.build(r.sentence for r in records)
    build_cache(records, vocab, tmp_path / "val.h5", image_size=S, train=False)
    return tmp_path / "val.h5", records


def test_evaluate_at_original_resolution(cache, tmp_path):
    path, records = cache
    reader = CacheReader(path)
    n = len(reader)
    # a perfect binary prediction (the padded ground truth) scores IoU ~1 at the original size
    masks = np.stack([reader.padded_mask(i) for i in range(n)])
    write_predictions(tmp_path / "gt.h5", reader.sent_id, reader.image_hw[reader.image_index], S, masks=masks)
    frame = evaluate_split(tmp_path / "gt.h5", path)
    assert list(frame.columns) == COLUMNS and len(frame) == n
    for i, rec in enumerate(records):
        gt = rec.mask.decode()
        assert frame["union"][i] >= gt.sum() and frame["intersection"][i] <= gt.sum()
    assert (frame["iou"] > 0.6).all()  # the 17 x 23 image loses detail through 64 x 64
    assert frame["iou"].median() > 0.85
    # all-background logits: zero intersection, union = ground-truth area at the original size
    write_predictions(
        tmp_path / "bg.h5",
        reader.sent_id,
        reader.image_hw[reader.image_index],
        S,
        logits=np.full((n, S // 8, S // 8), -5, np.float32),
    )
    frame = evaluate_split(tmp_path / "bg.h5", path)
    assert (frame["intersection"] == 0).all()
    assert list(frame["union"]) == [int(r.mask.decode().sum()) for r in records]
    assert list(frame["n_tokens"]) == list(reader.n_tokens)


def test_mismatched_sent_ids_are_an_error(cache, tmp_path):
    path, _ = cache
    reader = CacheReader(path)
    write_predictions(
        tmp_path / "p.h5",
        reader.sent_id[::-1],
        reader.image_hw[reader.image_index],
        S,
        logits=np.zeros((len(reader), S // 8, S // 8), np.float32),
    )
    with pytest.raises(InputError, match="sent_ids do not match"):
        evaluate_split(tmp_path / "p.h5", path)
