"""The official ``util/im_processing.resize_and_crop`` on skimage 0.13.1, ported line by line to numpy.

skimage 0.13.1 ``transform.resize(im, (R, R))`` (what the authors ran in 2017) warps with the
affine map ``r = (i + 0.5) * S / R - 0.5`` (half-pixel centres) and ``_warp_fast``'s
``bilinear_interpolation``: ``floor``/``ceil`` neighbours, each read by ``get_pixel2d`` in mode
``'constant'`` (``cval`` 0 outside the map), weights ``1 - d`` and ``d``, all in float64, no
anti-aliasing. 0.13 estimates that affine map by least squares from three corners, which only
adds roundoff; the exact map is used here. A slow, obvious reference for the tests.
"""

from __future__ import annotations

import numpy as np


def _pixel(image: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``get_pixel2d`` in mode 'constant': ``image[r, c]``, 0 outside."""
    rows, cols = image.shape
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    return np.where(inside, image[np.clip(r, 0, rows - 1), np.clip(c, 0, cols - 1)], 0.0)


def skimage013_resize(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``skimage.transform.resize(image, (rows, cols))`` of skimage 0.13.1 (order 1, mode 'constant')."""
    img = np.asarray(image, np.float64)
    out_r, out_c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    r = img.shape[0] / rows * (out_r + 0.5) - 0.5
    c = img.shape[1] / cols * (out_c + 0.5) - 0.5
    minr, minc = np.floor(r).astype(int), np.floor(c).astype(int)
    maxr, maxc = np.ceil(r).astype(int), np.ceil(c).astype(int)
    dr, dc = r - minr, c - minc
    top = (1 - dc) * _pixel(img, minr, minc) + dc * _pixel(img, minr, maxc)
    bottom = (1 - dc) * _pixel(img, maxr, minc) + dc * _pixel(img, maxr, maxc)
    return np.clip((1 - dr) * top + dr * bottom, img.min(), img.max())


def official_resize_and_crop(im: np.ndarray, input_h: int, input_w: int) -> np.ndarray:
    """``util/im_processing.resize_and_crop`` of the authors' code, on ``skimage013_resize``."""
    im_h, im_w = im.shape[:2]
    scale = max(input_h / im_h, input_w / im_w)
    resized_h = int(np.round(im_h * scale))
    resized_w = int(np.round(im_w * scale))
    crop_h = int(np.floor(resized_h - input_h) / 2)
    crop_w = int(np.floor(resized_w - input_w) / 2)
    resized_im = skimage013_resize(im, resized_h, resized_w)
    return resized_im[crop_h : crop_h + input_h, crop_w : crop_w + input_w]
