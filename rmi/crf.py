"""DenseCRF refinement with the official parameters (docs/faithfulness.md section 6), via pydensecrf.

Two labels; unary ``[-log(1-p), -log(p)]`` with ``p`` clipped to ``[clip, 1-clip]``; a
Gaussian kernel (``sxy=3, compat=3``) and a bilateral kernel on the padded RGB image
(``sxy=20, srgb=3, compat=10``); 5 mean-field iterations; the label of the larger marginal.
``refine_file`` runs it over a whole prediction file with a process pool.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rmi.data.cache import CacheReader
from rmi.errors import InputError
from rmi.prediction_file import PredictionReader, write_predictions

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CRFParams:
    """The DenseCRF settings (config ``crf:``); the defaults are the official ones."""

    gaussian_sxy: float = 3
    gaussian_compat: float = 3
    bilateral_sxy: float = 20
    bilateral_srgb: float = 3
    bilateral_compat: float = 10
    iterations: int = 5
    clip: float = 1e-8

    @classmethod
    def from_dict(cls, values: dict) -> CRFParams:
        """Build from a config ``crf:`` mapping (``enabled`` and unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def refine(prob: np.ndarray, image: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """``prob (S, S)`` foreground probability and ``image (S, S, 3) uint8`` -> ``(S, S) bool`` mask."""
    return refine_image(prob[None], image, params)[0]


def refine_image(probs: np.ndarray, image: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """``probs (K, S, S)``, the foreground probabilities of K expressions of one ``image (S, S, 3) uint8``
    -> ``(K, S, S) bool`` masks, each what ``refine`` gives alone.

    The two kernels depend on the image only, so they are built once (the bilateral lattice is half of
    a mask's time); each expression's unary then replaces the last, and ``inference`` starts from it.
    """
    import pydensecrf.densecrf as dcrf

    k, h, w = probs.shape
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be ({h}, {w}, 3) uint8, got {image.shape} {image.dtype}")
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=params.bilateral_compat,
    )
    masks = np.empty((k, h, w), bool)
    for j, prob in enumerate(probs):
        p = np.clip(prob.astype(np.float64), params.clip, 1.0 - params.clip)
        crf.setUnaryEnergy(np.ascontiguousarray(np.stack([-np.log(1.0 - p), -np.log(p)]).reshape(2, -1), np.float32))
        q = np.asarray(crf.inference(int(params.iterations)), np.float32).reshape(2, h, w)
        masks[j] = q[1] > q[0]
    return masks


_worker: dict = {}


def _init_worker(pred_path: str, cache_path: str, params: CRFParams) -> None:
    _worker.update(pred=PredictionReader(pred_path), cache=CacheReader(cache_path), params=params)


def _refine_rows(rows: range) -> np.ndarray:
    """CRF masks ``(len(rows), S, S) bool`` of prediction rows (in a worker or in-process), one
    ``refine_image`` per run of rows on the same image."""
    pred, cache, params = _worker["pred"], _worker["cache"], _worker["params"]
    images = cache.image_index[rows.start : rows.stop]
    starts = [0, *np.flatnonzero(images[1:] != images[:-1]) + 1, len(rows)]
    return np.concatenate(
        [
            refine_image(np.stack([pred.padded_probability(i) for i in rows[a:b]]), cache.image(int(images[a])), params)
            for a, b in zip(starts[:-1], starts[1:], strict=True)
        ]
    )


def _chunks(image_index: np.ndarray, size: int) -> list[range]:
    """The rows ``0..N-1`` in consecutive ranges of at least ``size`` (but the last), cut only where
    ``image_index (N,)`` changes: an image's expressions share one ``refine_image``."""
    cuts = [*(np.flatnonzero(image_index[1:] != image_index[:-1]) + 1), len(image_index)]
    chunks, start = [], 0
    for cut in cuts:
        if cut > start and (cut - start >= size or cut == len(image_index)):
            chunks.append(range(start, int(cut)))
            start = int(cut)
    return chunks


def refine_file(
    pred_path: str | Path,
    cache_path: str | Path,
    out_path: str | Path,
    params: CRFParams,
    threads: int = 1,
    chunk: int = 16,
) -> None:
    """CRF every expression of a ``logits`` prediction file; write a ``mask`` prediction file.

    ``threads`` worker processes each take about ``chunk`` expressions, whole images, at a time (1: in-process).
    """
    with PredictionReader(pred_path) as pred:
        n, size, sent_id, orig_hw, attrs = len(pred), pred.image_size, pred.sent_id, pred.orig_hw, pred.attrs
        if pred.kind != "logits":
            raise InputError(pred_path, f"DenseCRF needs logits, this file holds {pred.kind}")
    cache = CacheReader(cache_path)
    if not np.array_equal(cache.sent_id, sent_id):
        raise InputError(pred_path, f"its sent_ids do not match those of {cache_path} (stale prediction?)")
    masks = np.zeros((n, size, size), bool)
    chunks = _chunks(cache.image_index, chunk)
    log.info("DenseCRF on %d expressions of %s with %d process(es)", n, pred_path, threads)
    with tqdm(total=n, unit="mask", disable=None, mininterval=2.0) as bar:
        if threads <= 1:
            _init_worker(str(pred_path), str(cache_path), params)
            results = map(_refine_rows, chunks)
        else:
            pool = ProcessPoolExecutor(
                threads,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(str(pred_path), str(cache_path), params),
            )
            results = pool.map(_refine_rows, chunks)
        try:
            for rows, out in zip(chunks, results, strict=True):
                masks[rows.start : rows.stop] = out
                bar.update(len(rows))
        finally:
            if threads > 1:
                pool.shutdown()
            _worker.clear()
    write_predictions(
        out_path,
        sent_id=sent_id,
        orig_hw=orig_hw,
        image_size=size,
        masks=masks,
        attrs={
            **{k: v for k, v in attrs.items() if k in ("model", "backbone", "fusion")},
            "source": str(pred_path),
            "crf": json.dumps(dataclasses.asdict(params), sort_keys=True),
        },
    )
