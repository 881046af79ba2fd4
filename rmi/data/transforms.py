"""Resize-and-pad to S x S and its inverse, used by cache and evaluation (docs/faithfulness.md sections 1, 7).

Forward: scale = min(S/h, S/w), resized size ``round(h*scale) x round(w*scale)``, centred
zero padding (top = (S - h') // 2, left = (S - w') // 2), as the official
``util/im_processing.resize_and_pad``. Masks are resized bilinearly without antialiasing and then
``> 0``, as the official code does (``build_batches.py``). Images are resized bilinearly by PIL,
which antialiases when shrinking -- unlike the official ``skimage.transform.resize`` of its time
(no antialiasing).

Inverse, two ways: ``resize_and_crop`` is the official one (``util/im_processing.py``): the
whole BINARY S x S map is resized bilinearly to a square of side ``round(S * max(h/S, w/S))``
and its centre ``h x w`` is cut out, every pixel > 0 counting as foreground.
``unpad_and_resize`` crops the content box first and resizes it to ``h x w`` (nearest for
binary masks, bilinear for score maps, thresholded afterwards); figures and the ``logits``
evaluation option use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

OUTPUT_STRIDE = 8


@dataclass(frozen=True)
class PadGeometry:
    """Where an ``h x w`` image lands inside the ``size x size`` padded square."""

    height: int
    width: int
    size: int
    new_height: int
    new_width: int
    top: int
    left: int

    @classmethod
    def of(cls, height: int, width: int, size: int) -> PadGeometry:
        """Geometry of the official ``resize_and_pad`` for an ``height x width`` input."""
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        scale = min(size / height, size / width)
        new_h = min(size, max(1, int(np.round(height * scale))))
        new_w = min(size, max(1, int(np.round(width * scale))))
        return cls(height, width, size, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2)

    @property
    def box(self) -> tuple[slice, slice]:
        """Row and column slices of the content inside the padded square."""
        return slice(self.top, self.top + self.new_height), slice(self.left, self.left + self.new_width)


def resize_and_pad_image(image: np.ndarray, size: int) -> np.ndarray:
    """``(h, w, 3) or (h, w) uint8 -> (size, size, 3) uint8``; grey images are tiled to RGB."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    geo = PadGeometry.of(image.shape[0], image.shape[1], size)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (geo.new_width, geo.new_height), Image.Resampling.BILINEAR
    )
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[geo.box] = np.asarray(resized)
    return out


def resize_and_pad_mask(mask: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """``(h, w) bool -> (size, size) bool``.

    ``mode="bilinear"`` (the official rule, used by the cache): bilinear resize of the 0/1 map
    without antialiasing, then ``> 0`` (a boundary may grow by one pixel). ``"nearest"``:
    nearest-neighbour resize, exactly inverted by ``unpad_and_resize`` on integer upscales.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"unknown mode {mode!r} (nearest | bilinear)")
    geo = PadGeometry.of(mask.shape[0], mask.shape[1], size)
    out = np.zeros((size, size), dtype=bool)
    if mode == "nearest":
        rows = _nearest_index(mask.shape[0], geo.new_height)
        out[geo.box] = mask[np.ix_(rows, _nearest_index(mask.shape[1], geo.new_width))]
    else:
        out[geo.box] = resize_bilinear(np.asarray(mask, np.float32), geo.new_height, geo.new_width) > 0
    return out


def unpad_and_resize(padded: np.ndarray, height: int, width: int, mode: str = "nearest") -> np.ndarray:
    """Inverse of resize-and-pad: ``(S, S) -> (height, width)``, same dtype kind.

    ``mode="nearest"`` for binary masks (bool in, bool out); ``mode="bilinear"`` for float
    maps such as probabilities (float32 out; threshold afterwards).
    """
    size = padded.shape[0]
    if padded.shape != (size, size):
        raise ValueError(f"expected a square (S, S) array, got {padded.shape}")
    geo = PadGeometry.of(height, width, size)
    content = padded[geo.box]
    if mode == "nearest":
        img = Image.fromarray(np.ascontiguousarray(content, dtype=np.uint8))
        return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)).astype(padded.dtype)
    if mode == "bilinear":
        return resize_bilinear(np.asarray(content, np.float32), height, width)
    raise ValueError(f"unknown mode {mode!r} (nearest | bilinear)")


def resize_and_crop(binary: np.ndarray, height: int, width: int) -> np.ndarray:
    """Official inverse of resize-and-pad (``util/im_processing.resize_and_crop``): ``(S, S) -> (height, width) bool``.

    Resize the whole ``(S, S)`` 0/1 map to ``R x R``, ``R = round(S * max(height/S, width/S))``,
    as skimage 0.13 did (bilinear, half-pixel centres, zeros outside the map, no anti-aliasing),
    cut out ``height x width`` at ``((R - height) // 2, (R - width) // 2)``, and count every
    pixel > 0 as foreground (``eval_tools.compute_mask_IU``). An output pixel is thus foreground
    when one of the up to 2 x 2 input pixels it interpolates is.
    """
    # scikit-image is imported here, not at the top: only evaluation needs it, not the data and training envs.
    from skimage.transform import resize

    size = binary.shape[0]
    if binary.shape != (size, size):
        raise ValueError(f"expected a square (S, S) array, got {binary.shape}")
    side = int(np.round(size * max(height / size, width / size)))
    resized = resize(np.asarray(binary, np.float64), (side, side), order=1, mode="constant", anti_aliasing=False)
    top, left = (side - height) // 2, (side - width) // 2
    return resized[top : top + height, left : left + width] > 0


def cell_grid(mask, stride: int = OUTPUT_STRIDE):
    """Training target at the feature grid: ``(..., S, S) -> (..., S/stride, S/stride)`` (NumPy or torch).

    Samples ``mask[stride*i, stride*j]``, which is what the official bilinear resize of the
    target to 40 x 40 (TF1, no half-pixel centres) reads.
    """
    return mask[..., ::stride, ::stride]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index, PyTorch's ``nearest``: ``floor(dst * (n_in / n_out))`` in float32."""
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def _bilinear_matrix(n_in: int, n_out: int, half_pixel: bool) -> np.ndarray:
    """``(n_out, n_in)`` float32 interpolation weights; each row holds at most two non-zero weights.

    ``half_pixel``: PyTorch's ``bilinear, align_corners=False`` (source ``(dst + 0.5) * n_in / n_out - 0.5``,
    clamped at 0), with its float32 arithmetic, so that a weight is exactly zero where PyTorch's is.
    Otherwise TF1 ``resize_bilinear`` (``align_corners=False``, no half-pixel centres): output ``p``
    reads input coordinate ``p * n_in / n_out``.
    """
    dst = np.arange(n_out, dtype=np.float32 if half_pixel else np.float64)
    if half_pixel:  # scale * (dst + 0.5) - 0.5 rounded once to float32, as PyTorch's fused multiply-add does
        scale = np.float64(np.float32(n_in) / np.float32(n_out))
        src = np.maximum((scale * (dst + np.float32(0.5)).astype(np.float64) - 0.5).astype(np.float32), 0)
    else:
        src = dst * (n_in / n_out)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = np.clip(src - lo, 0, 1)
    weights = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights.astype(np.float32)


def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(..., h, w) -> (..., height, width)`` float32, PyTorch's ``interpolate(mode="bilinear",
    align_corners=False)`` (half-pixel centres, no antialiasing) as two matrix products."""
    wy = _bilinear_matrix(array.shape[-2], height, half_pixel=True)
    wx = _bilinear_matrix(array.shape[-1], width, half_pixel=True)
    return wy @ np.asarray(array, np.float32) @ wx.T


def upsample_logits(logits: np.ndarray, size: int) -> np.ndarray:
    """``(..., S/8, S/8) -> (..., S, S)`` float32 bilinear upsampling as the official TF1 code does it.

    Pixel ``(8i, 8j)`` gets exactly cell ``(i, j)``'s value -- the cell the training target
    ``mask[8i, 8j]`` (``cell_grid``) taught -- and pixels in between interpolate linearly. (PyTorch's
    ``align_corners=False`` uses half-pixel centres instead, which would shift every prediction by
    3.5 pixels against what the model was trained on.)
    """
    wy = _bilinear_matrix(logits.shape[-2], size, half_pixel=False)
    wx = _bilinear_matrix(logits.shape[-1], size, half_pixel=False)
    return wy @ np.asarray(logits, np.float32) @ wx.T
