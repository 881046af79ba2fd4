"""Trunk-feature cache (rule extract_features): run a frozen backbone trunk once per image.

``results/features/{dataset}/{backbone}/{split}.h5`` holds ``features (N_img, C, S/8, S/8)
float16``, one chunk per image, in the row order of the split's cache ``images``. Both fusions
of a backbone train from it, so the trunk (most of the compute for R and D) runs once per image
per dataset instead of once per image per training step. Size: C=2048 at 40 x 40 is 6.5 MB per
image, which is why the cache is optional (``train.feature_cache``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from rmi.data.cache import CacheReader
from rmi.device import select_device
from rmi.errors import InputError
from rmi.fileio import atomic_path
from rmi.models.backbones import build_backbone

log = logging.getLogger(__name__)
FP16_MAX = float(np.finfo(np.float16).max)


@torch.no_grad()
def extract_features(
    cache_path: str | Path,
    out_path: str | Path,
    backbone: str,
    backbone_cfg: dict,
    visual_dim: int,
    weights_path: str | None = None,
    batch_size: int = 8,
    device: str | None = None,
    threads: int = 1,
) -> None:
    """Write ``features (N_img, C, S/8, S/8) float16`` of every cached image (trunk under no_grad).

    Only a frozen trunk can be cached: a trainable one changes during training. Features beyond
    the float16 range (e.g. an untrained ResNet) raise ``InputError`` and leave no file.
    """
    if not backbone_cfg.get("freeze_trunk", True):
        raise InputError(f"backbones.{backbone}", "freeze_trunk is false: a trainable trunk cannot be cached")
    torch.set_num_threads(max(1, threads))
    dev = select_device(device)
    trunk, _ = build_backbone(backbone, visual_dim, backbone_cfg, weights_path)
    trunk.to(dev).eval()
    cache = CacheReader(cache_path)
    n, size = cache.n_images, cache.image_size // 8
    log.info("extracting %s trunk features of %d images of %s on %s", backbone, n, cache_path, dev)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset(
            "features",
            shape=(n, trunk.out_channels, size, size),
            dtype=np.float16,
            chunks=(1, trunk.out_channels, size, size),
        )
        for start in tqdm(range(0, n, batch_size), unit="batch", disable=None, mininterval=2.0):
            idx = np.arange(start, min(n, start + batch_size))
            images = torch.from_numpy(np.ascontiguousarray(cache.images(idx).transpose(0, 3, 1, 2)))
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                features = trunk(images.to(dev, non_blocking=True))
            values = features.float().cpu().numpy()
            peak = float(np.abs(values).max())
            if not peak <= FP16_MAX:  # also catches nan/inf from the trunk itself
                raise InputError(
                    f"backbones.{backbone}",
                    f"trunk features reach {peak:.3g}, beyond float16 ({FP16_MAX:.0f}): the feature"
                    " cache cannot hold them (untrained weights?); set train.feature_cache: false",
                )
            ds[start : start + len(idx)] = values.astype(np.float16)
        f.attrs.update({"backbone": backbone, "cache": str(cache_path), "image_size": cache.image_size})
