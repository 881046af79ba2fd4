"""The 8-channel spatial feature of the official code (``generate_spatial_batch``)."""

from __future__ import annotations

import torch
from torch import Tensor

SPATIAL_DIM = 8


def spatial_features(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """``(8, H, W)`` float32: at cell ``(h, w)`` ``[xmin, ymin, xmax, ymax, xctr, yctr, 1/W, 1/H]``.

    ``xmin = w/W*2-1``, ``xmax = (w+1)/W*2-1``, ``xctr`` their mean; ``y`` likewise with ``h, H``.
    """
    xmin = torch.arange(width, dtype=torch.float64, device=device) / width * 2 - 1
    ymin = torch.arange(height, dtype=torch.float64, device=device) / height * 2 - 1
    xmax, ymax = xmin + 2 / width, ymin + 2 / height
    shape = (height, width)
    x = [v[None, :].expand(shape) for v in (xmin, xmax, (xmin + xmax) / 2)]
    y = [v[:, None].expand(shape) for v in (ymin, ymax, (ymin + ymax) / 2)]
    inv = [torch.full(shape, 1 / n, dtype=torch.float64, device=device) for n in (width, height)]
    return torch.stack([x[0], y[0], x[1], y[1], x[2], y[2], *inv]).float()
