"""DenseCRF: the official parameters, better than the thresholded unary, one CRF per image == one per
expression, pool == in-process."""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax
from scipy.ndimage import gaussian_filter

from builders import make_records
from rmi.crf import CRFParams, _chunks, refine, refine_file, refine_image
from rmi.data.cache import CacheReader, build_cache
from rmi.prediction_file import PredictionReader, write_predictions
from rmi.text import Vocab

S = 64


def synthetic(rng):
    """A two-colour image with a disc, and a blurred, noisy, shifted unary of the disc."""
    yy, xx = np.mgrid[:S, :S]
    gt = (yy - 30) ** 2 + (xx - 34) ** 2 < 15**2
    image = np.where(gt[..., None], [200, 40, 40], [40, 90, 160]).astype(np.float64)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    blurred = gaussian_filter(np.roll(gt, 3, axis=1).astype(np.float64), 6)
    prob = np.clip(0.15 + 0.7 * blurred + rng.normal(0, 0.08, gt.shape), 0.01, 0.99)
    return image, prob, gt


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_crf_beats_thresholded_unary(rng):
    image, prob, gt = synthetic(rng)
    assert iou(refine(prob, image), gt) > iou(prob > 0.5, gt) + 0.05


def test_refine_equals_pydensecrf_with_official_parameters(rng):
    image, prob, _ = synthetic(rng)
    crf = dcrf.DenseCRF2D(S, S, 2)
    crf.setUnaryEnergy(unary_from_softmax(np.stack([1 - prob, prob]).astype(np.float32)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=20, srgb=3, rgbim=image, compat=10)
    expected = np.argmax(np.array(crf.inference(5)).reshape(2, S, S), axis=0) == 1
    assert np.array_equal(refine(prob, image, CRFParams()), expected)


def test_one_crf_per_image_equals_a_fresh_crf_per_expression(rng):
    """The kernels built once, then each unary in turn, in either order: the masks of fresh CRFs."""
    image, prob, _ = synthetic(rng)
    probs = np.stack([prob, 1 - prob, np.roll(prob, 20, axis=0), np.full((S, S), 0.4)])
    expected = np.stack([refine(p, image) for p in probs])
    assert len({m.tobytes() for m in expected}) == 4  # four different masks
    assert np.array_equal(refine_image(probs, image), expected)
    assert np.array_equal(refine_image(probs[::-1], image), expected[::-1])


def test_chunks_keep_an_images_expressions_together():
    image_index = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4])
    chunks = _chunks(image_index, 3)
    assert chunks == [range(0, 3), range(3, 6), range(6, 10), range(10, 11)]
    assert _chunks(image_index, 100) == [range(0, 11)]
    assert _chunks(np.zeros(0, int), 3) == []


def test_probabilities_of_0_and_1_are_clipped(rng):
    image, prob, _ = synthetic(rng)
    hard = (prob > 0.5).astype(np.float64)
    out = refine(hard, image)
    assert out.dtype == bool and 0 < out.sum() < S * S


def test_params_from_config():
    p = CRFParams.from_dict({"enabled": True, "bilateral_sxy": 30, "iterations": 3})
    assert p.bilateral_sxy == 30 and p.iterations == 3 and p.gaussian_sxy == 3


def test_refine_file_pool_equals_in_process(tmp_path, rng):
    records = make_records(tmp_path / "images")
    vocab = Vocab.build(r.sentence for r in records)
    build_cache(records, vocab, tmp_path / "val.h5", image_size=S, train=False)
    reader = CacheReader(tmp_path / "val.h5")
    n = len(reader)
    logits = rng.normal(0, 2, (n, S // 8, S // 8)).astype(np.float32)
    write_predictions(tmp_path / "p.h5", reader.sent_id, reader.image_hw[reader.image_index], S, logits=logits)
    refine_file(tmp_path / "p.h5", tmp_path / "val.h5", tmp_path / "one.h5", CRFParams(), threads=1)
    refine_file(tmp_path / "p.h5", tmp_path / "val.h5", tmp_path / "two.h5", CRFParams(), threads=2, chunk=3)
    with (
        PredictionReader(tmp_path / "one.h5") as a,
        PredictionReader(tmp_path / "two.h5") as b,
        PredictionReader(tmp_path / "p.h5") as p,
    ):
        assert a.kind == "mask" and np.array_equal(a.sent_id, reader.sent_id)
        for i in range(n):
            assert np.array_equal(a.padded_mask(i), b.padded_mask(i))
            expected = refine(p.padded_probability(i), reader.image(int(reader.image_index[i])))
            assert np.array_equal(a.padded_mask(i), expected)
            assert a.original_mask(i).shape == tuple(reader.image_hw[reader.image_index[i]])
