"""Dense pretraining of the demo's ``tiny`` trunk (rule ``pretrain_backbone``).

The paper never trains its trunk: it freezes an ImageNet (R) or a semantic-segmentation (D, DeepLab)
ResNet-101. The demo has no weights to download, so it makes its own the way DeepLab's trunk was
made: semantic segmentation of the training images. Per pixel, two labels are learned from the COCO
instance annotations of the TRAINING-split images only (images a train ref points to; no val/test
image and no referring expression is read): the object's category (``category_id``, 0 = background)
and its colour (``attributes.colour``, 0 = background). Crowd regions and, on grey images, the colour
are ignored. Two 1x1-conv heads on the trunk output ``(U, C, S/8, S/8)`` are trained with
cross-entropy against the labels at the cell grid (``label[8i, 8j]``, as the referring target is
sampled; Adam, random flips and quarter turns: neither changes a shape's category or colour; bf16
autocast where the hardware has it natively, ``rmi.device.autocast``); the heads are dropped and the trunk's
``state_dict`` is written, which ``build_backbone("tiny", ..., weights_path=...)`` loads through the
same code path as the R/D weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from rmi.data.cache import load_image
from rmi.data.refer import ImageObjects, split_images
from rmi.data.transforms import cell_grid, resize_and_pad_image, resize_and_pad_mask
from rmi.device import native_bf16, select_device
from rmi.fileio import atomic_path
from rmi.models.backbones import IMAGENET_MEAN, IMAGENET_STD, tiny_body

log = logging.getLogger(__name__)
IGNORE = 255


@dataclass
class DenseSet:
    """Training images and their per-pixel labels, resized and padded to S x S.

    ``images (N, S, S, 3) uint8``, ``category (N, S, S) uint8`` (0 background, ``IGNORE``),
    ``colour (N, S, S) uint8`` (0 background, 1.. = ``colours`` order, ``IGNORE``).
    """

    images: np.ndarray
    category: np.ndarray
    colour: np.ndarray
    colours: list[str]

    @property
    def n_categories(self) -> int:
        return int(self.category[self.category != IGNORE].max()) + 1


def _labels(item: ImageObjects, size: int, colours: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's padded RGB and its category/colour label maps (later annotations paint over earlier)."""
    image = load_image(item.image_path)
    grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
    category = np.zeros((size, size), np.uint8)
    colour = np.zeros((size, size), np.uint8)
    for category_id, attributes, mask_source, crowd in item.objects:
        mask = resize_and_pad_mask(mask_source.decode(), size)
        name = attributes.get("colour")
        category[mask] = IGNORE if crowd else category_id
        colour[mask] = IGNORE if crowd or grey or name not in colours else colours.index(name) + 1
    return resize_and_pad_image(image, size), category, colour


def load_dense_set(sources: list[dict], size: int) -> DenseSet:
    """The training images of every refer-layout source ``{"refer_dir", "split_by", "image_dir", "split"}``."""
    items = [
        item
        for src in sources
        for item in split_images(src["refer_dir"], src["split_by"], src["image_dir"], src["split"])
    ]
    colours = sorted({a["colour"] for item in items for _, a, _, crowd in item.objects if "colour" in a and not crowd})
    images, category, colour = zip(*(_labels(item, size, colours) for item in tqdm(items, disable=None)), strict=True)
    return DenseSet(np.stack(images), np.stack(category), np.stack(colour), colours)


def dihedral(arrays: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Transform ``k`` (0-7) of the square's symmetry group applied to ``(B, S, S, ...)`` arrays:
    ``k % 4`` quarter turns, then a horizontal flip if ``k >= 4``."""
    out = [np.rot90(a, k % 4, axes=(1, 2)) for a in arrays]
    return [a[:, :, ::-1] for a in out] if k >= 4 else out


class DenseHeads(nn.Module):
    """``tiny_body`` + 1x1-conv category and colour heads on its ``(B, C, S/8, S/8)`` output."""

    def __init__(self, widths: tuple[int, int, int], n_categories: int, n_colours: int):
        super().__init__()
        self.body = tiny_body(widths)
        self.category = nn.Conv2d(widths[-1], n_categories, 1)
        self.colour = nn.Conv2d(widths[-1], n_colours + 1, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S) uint8`` -> category ``(B, K, S/8, S/8)`` and colour ``(B, C + 1, S/8, S/8)`` logits."""
        features = self.body((images.float() / 255 - self.mean) / self.std)
        return self.category(features), self.colour(features)


def pretrain_trunk(
    sources: list[dict],
    out: str | Path,
    widths: tuple[int, int, int],
    image_size: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    threads: int = 1,
    device: str | None = None,
) -> dict:
    """Train ``tiny_body(widths)`` for dense labels of the sources' training images (``load_dense_set``);
    write its ``state_dict`` to ``out``.

    Returns ``{"images", "categories", "colours", "loss_start", "loss_end", "pixel_accuracy"}`` (accuracy of
    both heads on the labelled pixels of the last 5% of the steps' batches).
    """
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    dev = select_device(device)
    data = load_dense_set(sources, image_size)
    log.info(
        "pretraining tiny%s on %d training images: %d categories, colours %s",
        list(widths),
        len(data.images),
        data.n_categories - 1,
        data.colours,
    )
    model = DenseHeads(tuple(widths), data.n_categories, len(data.colours))
    model = model.to(dev, memory_format=torch.channels_last).train()  # faster convolutions on CPU and GPU
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - min(s, steps) / steps) ** 0.9)
    rng = np.random.default_rng(seed)
    losses, correct, labelled = [], 0, 0
    for step in tqdm(range(steps), disable=None, mininterval=5):
        idx = rng.choice(len(data.images), size=min(batch_size, len(data.images)), replace=False)
        arrays = dihedral([a[idx] for a in (data.images, data.category, data.colour)], int(rng.integers(8)))
        images = torch.from_numpy(np.ascontiguousarray(arrays[0])).permute(0, 3, 1, 2).to(dev)  # channels-last
        targets = [torch.from_numpy(np.ascontiguousarray(cell_grid(a))).long().to(dev) for a in arrays[1:]]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=native_bf16(dev)):
            logits = model(images)
        loss = sum(F.cross_entropy(lg.float(), tg, ignore_index=IGNORE) for lg, tg in zip(logits, targets, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step >= steps * 0.95:
            for lg, tg in zip(logits, targets, strict=True):
                keep = tg != IGNORE
                correct += int((lg.argmax(1)[keep] == tg[keep]).sum())
                labelled += int(keep.sum())
        if (step + 1) % max(1, steps // 10) == 0:
            log.info("step %d/%d loss %.4f", step + 1, steps, np.mean(losses[-max(1, steps // 10) :]))
    with atomic_path(out) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.body.state_dict().items()}, tmp)
    window = max(1, steps // 20)
    summary = {
        "images": len(data.images),
        "categories": data.n_categories - 1,
        "colours": data.colours,
        "loss_start": round(float(np.mean(losses[:window])), 4),
        "loss_end": round(float(np.mean(losses[-window:])), 4),
        "pixel_accuracy": round(correct / max(1, labelled), 4),
    }
    log.info("pretrained trunk -> %s: %s", out, summary)
    return summary
