"""Prediction files (``results/predictions/{dataset}/{model}/{split}.h5``): write, read, rebuild.

Two kinds, named by the ``kind`` attribute:

* ``logits`` (rule predict): ``logits (N, S/8, S/8) float32``, the model output before the
  sigmoid. Padded S x S mask: bilinear upsampling to S x S as TF1 does
  (``rmi.data.transforms.upsample_logits``), then ``>= 1e-9`` compared in float32 -- the official
  ``main.py`` test loop (``pred_raw = up_val >= score_thresh``); the probability map is the
  sigmoid of the upsampled logits (the DenseCRF input).
* ``mask`` (rule densecrf): ``mask (N, S, S) bool``, the binary S x S prediction.

Both hold ``sent_id (N,) int64`` in the cache's expression order and ``orig_hw (N, 2) int32``,
so a file is self-contained; the ``rebuild`` attribute repeats these rules in words.

At the original size (``PredictionReader.original_mask``), ``resize="official"`` (what Table 1
uses) maps the BINARY S x S mask back as the official code does,
``rmi.data.transforms.resize_and_crop``; ``resize="logits"`` (the comparison option) crops the
content box and resizes it to ``h x w`` first -- the upsampled logits bilinearly, then ``> 0``;
a ``mask`` file with nearest neighbour.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from scipy.special import expit

from rmi.data.transforms import resize_and_crop, unpad_and_resize, upsample_logits
from rmi.errors import InputError
from rmi.fileio import atomic_path

LOGITS, MASK = "logits", "mask"
#: ``main.py`` ``test()``: ``score_thresh = 1e-9`` against the float32 upsampled logits
SCORE_THRESHOLD = np.float32(1e-9)
#: ways to map a prediction back to the original size (config ``evaluate.resize``)
RESIZE_MODES = ("official", "logits")
_OFFICIAL = (
    "at original size (official, main.py test()): resize the whole binary S x S map bilinearly to "
    "round(S * max(h/S, w/S)) squared (skimage, zeros outside, no anti-aliasing), centre-crop orig_hw, > 0"
)
REBUILD = {
    LOGITS: (
        "upsample logits bilinearly from S/8 to S x S as TF1 does (rmi.data.transforms.upsample_logits: "
        "pixel 8i reads cell i); padded mask = upsampled logit >= 1e-9 (float32); " + _OFFICIAL
    ),
    MASK: "binary S x S mask; " + _OFFICIAL,
}


def threshold_logits(padded_logits: np.ndarray) -> np.ndarray:
    """Upsampled logits ``(..., S, S)`` -> ``(..., S, S) bool``: ``>= 1e-9``, compared in float32 as
    the official code compares its float32 TF output with the Python float ``1e-9``."""
    return np.asarray(padded_logits, np.float32) >= SCORE_THRESHOLD


def probability(logits: np.ndarray) -> np.ndarray:
    """Foreground probability (the sigmoid) of logits of any shape, float32."""
    return expit(np.asarray(logits, np.float32))


def write_predictions(
    path: str | Path,
    sent_id: np.ndarray,
    orig_hw: np.ndarray,
    image_size: int,
    *,
    logits: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    attrs: dict | None = None,
) -> None:
    """Atomically write a prediction file of kind ``logits`` or ``mask`` (give exactly one)."""
    if (logits is None) == (masks is None):
        raise ValueError("give exactly one of logits= or masks=")
    kind = LOGITS if logits is not None else MASK
    data = logits if logits is not None else masks
    if len(data) != len(sent_id) or len(orig_hw) != len(sent_id):
        raise ValueError(f"length mismatch: {len(data)} predictions, {len(sent_id)} sent_ids, {len(orig_hw)} sizes")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f["sent_id"] = np.asarray(sent_id, np.int64)
            f["orig_hw"] = np.asarray(orig_hw, np.int32)
            if kind == LOGITS:
                f.create_dataset("logits", data=np.asarray(logits, np.float32))
            else:
                chunks = (1, *masks.shape[1:]) if len(masks) else None
                f.create_dataset("mask", data=np.asarray(masks, bool), chunks=chunks, compression="lzf")
            f.attrs.update(attrs or {})
            f.attrs.update({"kind": kind, "image_size": int(image_size), "rebuild": REBUILD[kind]})


class PredictionReader:
    """Read one prediction file; ``original_mask(i)`` gives row ``i`` at its original size."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise InputError(self.path, f"cannot open prediction file ({err})") from err
        self.kind = self.file.attrs.get("kind")
        if self.kind not in REBUILD:
            raise InputError(self.path, f"unknown prediction kind {self.kind!r}")
        self.image_size = int(self.file.attrs["image_size"])
        self.sent_id = self.file["sent_id"][()]
        self.orig_hw = self.file["orig_hw"][()]
        self.attrs = dict(self.file.attrs)

    def __len__(self) -> int:
        return len(self.sent_id)

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def logits(self, i: int) -> np.ndarray:
        """Low-resolution logits ``(S/8, S/8) float32`` (kind ``logits`` only)."""
        if self.kind != LOGITS:
            raise InputError(self.path, "holds binary masks, not logits")
        return self.file["logits"][i]

    def padded_logits(self, i: int) -> np.ndarray:
        """Logits upsampled to ``(S, S) float32``."""
        return upsample_logits(self.logits(i), self.image_size)

    def padded_probability(self, i: int) -> np.ndarray:
        """Foreground probability ``(S, S) float32`` (the DenseCRF input)."""
        return probability(self.padded_logits(i))

    def padded_mask(self, i: int) -> np.ndarray:
        """Binary prediction at ``(S, S) bool`` (logits: ``threshold_logits`` of the upsampled logits)."""
        if self.kind == MASK:
            return self.file["mask"][i]
        return threshold_logits(self.padded_logits(i))

    def original_mask(self, i: int, resize: str = "official") -> np.ndarray:
        """Binary prediction at the original image size ``(h, w) bool``; ``resize`` one of ``RESIZE_MODES``."""
        h, w = (int(v) for v in self.orig_hw[i])
        if resize == "official":
            return resize_and_crop(self.padded_mask(i), h, w)
        if resize != "logits":
            raise ValueError(f"unknown resize {resize!r} ({' | '.join(RESIZE_MODES)})")
        if self.kind == MASK:
            return unpad_and_resize(self.file["mask"][i], h, w, mode="nearest")
        return unpad_and_resize(self.padded_logits(i), h, w, mode="bilinear") > 0
