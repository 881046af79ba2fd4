"""Mask sources (COCO segments, ReferIt .mat files) and COCO RLE helpers, via pycocotools."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from rmi.errors import InputError

log = logging.getLogger(__name__)


def _polygon_ok(poly) -> bool:
    return isinstance(poly, (list, tuple)) and len(poly) >= 6 and len(poly) % 2 == 0


@dataclass
class CocoSegments:
    """Union of COCO annotation segmentations (polygons or RLE) of one referred object.

    ``segmentations`` holds one entry per annotation: a list of polygons (flat
    ``[x1, y1, x2, y2, ...]``), or an RLE dict (``counts`` as a list = uncompressed, or a
    string = compressed).
    """

    segmentations: list
    height: int
    width: int
    where: str
    key: str = ""
    dropped_polygons: int = field(default=0, compare=False)

    def decode(self) -> np.ndarray:
        """``(height, width) bool``: the union of all segments.

        Polygons with fewer than 3 points are dropped (they have no area; pycocotools would
        read a 2-point polygon as a box); if nothing decodable remains this is an error.
        """
        h, w = int(self.height), int(self.width)
        rles = []
        for seg in self.segmentations:
            if isinstance(seg, dict):
                if "counts" not in seg or "size" not in seg:
                    raise InputError(self.where, "RLE segmentation without 'counts'/'size'")
                if [int(s) for s in seg["size"]] != [h, w]:
                    raise InputError(self.where, f"RLE size {seg['size']} differs from image size {[h, w]}")
                rle = seg
                if isinstance(seg["counts"], list):
                    rle = mask_utils.frPyObjects(seg, h, w)
                rles.append(rle)
            elif isinstance(seg, list):
                polys = [p for p in seg if _polygon_ok(p)]
                bad = len(seg) - len(polys)
                if bad:
                    self.dropped_polygons += bad
                    log.warning("%s: dropped %d polygon(s) with fewer than 3 points", self.where, bad)
                if polys:
                    rles.extend(mask_utils.frPyObjects([list(map(float, p)) for p in polys], h, w))
            else:
                raise InputError(self.where, f"segmentation of type {type(seg).__name__} is neither polygons nor RLE")
        if not rles:
            raise InputError(self.where, "no valid segmentation (polygons need at least 3 points)")
        merged = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
        return mask_utils.decode(merged).astype(bool)


@dataclass
class MatFileMask:
    """ReferIt mask: ``mask/<crop>.mat`` holding ``segimg_t``; foreground where it is 0."""

    path: Path
    key: str = ""

    @property
    def where(self) -> str:
        return str(self.path)

    def decode(self) -> np.ndarray:
        """``(h, w) bool`` = ``segimg_t == 0``."""
        import scipy.io

        if not Path(self.path).is_file():
            raise InputError(self.path, "mask file is missing")
        try:
            mat = scipy.io.loadmat(self.path)
        except Exception as err:  # scipy raises several types for corrupt files
            raise InputError(self.path, f"cannot read .mat file ({type(err).__name__}: {err})") from err
        if "segimg_t" not in mat:
            raise InputError(self.path, "no 'segimg_t' variable in .mat file")
        seg = np.asarray(mat["segimg_t"])
        if seg.ndim != 2:
            raise InputError(self.path, f"'segimg_t' has shape {seg.shape}, expected 2-D")
        return seg == 0


def rle_encode(mask: np.ndarray) -> bytes:
    """``(h, w) bool`` -> compressed COCO RLE counts (bytes); size is stored separately."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"]


def rle_decode(counts: bytes | str, height: int, width: int) -> np.ndarray:
    """Compressed COCO RLE counts -> ``(height, width) bool``."""
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return mask_utils.decode({"size": [int(height), int(width)], "counts": counts}).astype(bool)
