"""Prediction files (``results/predictions/{dataset}/{model}/{split}.h5``): write, read, rebuild.

Two kinds, named by the ``kind`` attribute:

* ``logits`` (rule predict): ``logits (N, S/8, S/8) float32``, the model output before the
  sigmoid. Rebuild: bilinear-upsample to S x S (half-pixel centres); the padded mask is
  ``logit > 0`` (probability > 0.5), the probability map ``sigmoid``; at the original size,
  crop the content box of the resize-and-pad and resize it bilinearly to ``h x w``, then
  ``> 0``.
* ``mask`` (rule densecrf): ``mask (N, S, S) bool``, a binary S x S prediction. Rebuild at the
  original size: crop the content box and resize it to ``h x w`` with nearest neighbour.

Both hold ``sent_id (N,) int64`` in the cache's expression order and ``orig_hw (N, 2) int32``,
so a file is self-contained; the ``rebuild`` attribute repeats these rules in words.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from rmi.data.transforms import unpad_and_resize, upsample_logits
from rmi.errors import InputError
from rmi.fileio import atomic_path

LOGITS, MASK = "logits", "mask"
REBUILD = {
    LOGITS: (
        "upsample logits bilinearly from S/8 to S x S as TF1 does (rmi.data.transforms.upsample_logits: "
        "pixel 8i reads cell i); padded mask = logit > 0; "
        "at original size: crop the resize-and-pad content box of the upsampled logits, resize it "
        "bilinearly to orig_hw, then > 0"
    ),
    MASK: "binary S x S mask; at original size: crop the resize-and-pad content box, resize to orig_hw with nearest",
}


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
        low = torch.from_numpy(self.logits(i))[None, None]
        return upsample_logits(low, self.image_size)[0, 0].numpy()

    def padded_probability(self, i: int) -> np.ndarray:
        """Foreground probability ``(S, S) float32`` (the DenseCRF input)."""
        return 1.0 / (1.0 + np.exp(-self.padded_logits(i)))

    def padded_mask(self, i: int) -> np.ndarray:
        """Binary prediction at ``(S, S) bool``."""
        if self.kind == MASK:
            return self.file["mask"][i]
        return self.padded_logits(i) > 0

    def original_mask(self, i: int) -> np.ndarray:
        """Binary prediction at the original image size ``(h, w) bool``."""
        h, w = (int(v) for v in self.orig_hw[i])
        if self.kind == MASK:
            return unpad_and_resize(self.file["mask"][i], h, w, mode="nearest")
        return unpad_and_resize(self.padded_logits(i), h, w, mode="bilinear") > 0
