"""Prediction files back at the original size: the official path (threshold, then resize the binary map)."""

from __future__ import annotations

import numpy as np
import pytest

from rmi.prediction_file import PredictionReader, threshold_logits, write_predictions


def test_threshold_is_the_official_float32_1e9():
    # main.py: pred_raw = (up_val >= 1e-9), up_val float32: the comparison happens in float32
    t = np.float32(1e-9)
    values = np.array([t, np.nextafter(t, np.float32(0)), 0.0, -1.0, 1e-3], np.float32)
    assert threshold_logits(values).tolist() == [True, False, False, False, True]
    assert np.float64(t) < 1e-9  # a float64 comparison would drop the first value


def test_logits_file_by_hand(tmp_path):
    """2 x 2 logit cells [[-1, -1], [-1, 1]] at S = 16, original size 16 x 16 (resize by 1).

    TF1 upsampling: pixel p reads cell coordinate p/8 (cell 1 from p = 8 on), so the upsampled
    logit is -1 + 2 fy fx with fy = min(p/8, 1), fx = min(q/8, 1); it is >= 1e-9 where
    fy fx > 1/2 (exactly 1/2 gives logit 0: background). The map comes back unchanged (R = S,
    every pixel reads itself).
    """
    write_predictions(
        tmp_path / "p.h5",
        np.array([7]),
        np.array([[16, 16]]),
        16,
        logits=np.array([[[-1, -1], [-1, 1]]], np.float32),
    )
    expected = np.zeros((16, 16), bool)
    expected[8:, 5:] = True  # fy = 1: fx > 1/2 from q = 5 (q = 4 gives exactly 1/2)
    expected[5:, 8:] = True
    for p, q in [(5, 7), (7, 5), (6, 6), (6, 7), (7, 6), (7, 7)]:  # p q / 64 > 1/2
        expected[p, q] = True
    with PredictionReader(tmp_path / "p.h5") as reader:
        np.testing.assert_array_equal(reader.padded_mask(0), expected)
        np.testing.assert_array_equal(reader.original_mask(0), expected)
        assert "1e-9" in reader.attrs["rebuild"]


def test_mask_file_takes_the_official_path_not_nearest(tmp_path):
    """A DenseCRF-style binary map: one pixel at (2, 5) of S = 8, original 12 x 16 (see
    test_transforms.test_resize_and_crop_by_hand): a 4 x 4 block officially, 2 x 2 with ``logits``."""
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 2, 5] = True
    write_predictions(tmp_path / "m.h5", np.array([3]), np.array([[12, 16]]), 8, masks=mask)
    with PredictionReader(tmp_path / "m.h5") as reader:
        official, legacy = reader.original_mask(0), reader.original_mask(0, resize="logits")
        with pytest.raises(ValueError, match="unknown resize"):
            reader.original_mask(0, resize="nearest")
    assert np.argwhere(official).tolist() == [[y, x] for y in range(1, 5) for x in range(9, 13)]
    assert np.argwhere(legacy).tolist() == [[y, x] for y in range(2, 4) for x in range(10, 12)]
