"""Pretraining a trunk inside the pipeline (rule ``pretrain_backbone``), where no weights can be downloaded.

The paper never trains its trunk: it freezes an ImageNet (R) or a semantic-segmentation (D, DeepLab)
ResNet-101. Without those weights (the embedded demo, a GPU machine without network) the pipeline
makes its own the way each was made, on the TRAINING images of the generated sets only (images a
train ref points to; no val/test image and no referring expression is read), from their COCO instance
annotations:

* ``dense`` (D, the DeepLab analogue; also the demo's ``tiny``): per pixel, the object's category
  (``category_id``, 0 = background) and colour (``attributes.colour``, 0 = background), cross-entropy
  of two 1x1-conv heads on the trunk output ``(B, C, S/8, S/8)`` against the labels at the cell grid
  (``label[8i, 8j]``, as the referring target is sampled). Crowd regions and, on grey images, the
  colour are ignored. With ``extent`` (the demo's ``tiny``), a third head learns each object pixel's
  size class: the object's visible share of the image, binned at ``EXTENT_EDGES`` (1.. =
  smallest..largest, 0 = background). Category and colour alone leave a trunk whose cells do not know
  how large their shape is, and a referring head of 1x1 convolutions cannot compare sizes across
  cells; "the small ellipse" then went mostly wrong (docs/demo.md, "Where the models miss").
* ``objects`` (an object-centric analogue of ImageNet, whose photos mostly show one object each):
  a square crop around each object (1.5 times its box, ``object_crops``), resized to
  ``object_size``; cross-entropy of its category and of its colour, read by ``fc`` off the
  average-pooled trunk output (the first ``K`` outputs: categories, then colours). Not the default
  of any backbone: ``benchmarks/bench_pretrain_task.py`` measures it against the two others.
* ``classify`` (R, the ImageNet analogue): which categories and colours appear in the image
  (multi-label), binary cross-entropy of the first ``K`` outputs of the ResNet's ``fc`` (2048 ->
  1000) on the average-pooled trunk output. The other ``1000 - K`` outputs keep their random
  initialisation; the whole ``fc`` becomes R's trainable visual projection, as ImageNet's fc1000 does.
  ``pooling="max"`` instead takes, per label, the maximum of ``fc`` over the S/8 x S/8 cells (the
  weakly supervised localisation of class activation maps): the label must be read off one cell,
  not the whole image, which makes the features more local.

``task`` and ``pooling`` default to the backbone's (``TASKS``, ``avg``); both can be set per backbone
(``backbones.<name>.pretrain``), e.g. the demo's ``tiny`` trunk pretrained as R is, which is how
``benchmarks/bench_pretrain_task.py`` measures what each task leaves the referring model.

Both train with Adam (polynomial decay), random flips and quarter turns (neither changes a shape's
category or colour), with ``precision="auto"`` in bf16 autocast where the hardware has it natively
(CUDA, a CPU with AMX or AVX512-BF16: ``rmi.device.native_bf16``), in fp32 elsewhere; ``"fp32"``
keeps fp32 everywhere, so the weights do not depend on whether the CPU has bf16. The
heads are dropped and the trunk's weights are written in the layout ``build_backbone`` reads through
the same code path as torchvision's (``tiny``: ``TinyBody``'s state_dict; ``resnet101``: a whole
torchvision ResNet-101 state_dict, ``fc`` included; ``deeplab101``: the trunk under ``backbone.``, as
in DeepLabV3-ResNet101).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from rmi.data.cache import load_image
from rmi.data.refer import ImageObjects, split_images
from rmi.data.transforms import cell_grid, resize_and_pad_image, resize_and_pad_mask
from rmi.device import native_bf16, select_device
from rmi.errors import InputError
from rmi.fileio import atomic_path
from rmi.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESNET_CHANNELS,
    TINY_WIDTHS,
    dilated_resnet101,
    resnet_trunk,
    tiny_body,
)

log = logging.getLogger(__name__)
IGNORE = 255
#: the pretraining task of each backbone
TASKS = {"tiny": "dense", "deeplab101": "dense", "resnet101": "classify"}
#: every pretraining task (``TASKS``: each backbone's default)
ALL_TASKS = ("dense", "classify", "objects")
#: how ``classify`` pools the per-cell label scores into the image's
POOLINGS = ("avg", "max")
#: ``auto``: bf16 autocast where native (``native_bf16``), fp32 elsewhere; ``fp32``: fp32 everywhere
PRECISIONS = ("auto", "fp32")
#: ``dense`` with ``extent``: an object's visible share of the image, bin edges (4 size classes)
EXTENT_EDGES = (0.08, 0.12, 0.18)


@dataclass
class LabelledSet:
    """Training images and their labels, resized and padded to S x S.

    ``images (N, S, S, 3) uint8``; per pixel ``category (N, S, S) uint8`` (0 background, ``IGNORE``),
    ``colour (N, S, S) uint8`` (0 background, 1.. = ``colours`` order, ``IGNORE``) and ``extent
    (N, S, S) uint8`` (0 background, 1.. the object's size class by ``EXTENT_EDGES``, ``IGNORE``); per
    image ``present (N, n_categories + len(colours)) float32``: 1 where a category (``category_id - 1``) or a
    colour (after the categories) appears in the image, ``-1`` for every colour of a grey image
    (unknown: not learned); per visible non-crowd object ``objects (M, 7) int64``: its image, its box
    ``y0, x0, y1, x1`` (S x S pixels, end exclusive), its category (``category_id - 1``) and its colour
    (``colours`` order, ``IGNORE`` on grey images).
    """

    images: np.ndarray
    category: np.ndarray
    colour: np.ndarray
    present: np.ndarray
    colours: list[str]
    objects: np.ndarray
    extent: np.ndarray

    @cached_property  # a pass over every label pixel (0.4 s for the demo's 4000 images), asked for 3 times
    def n_categories(self) -> int:
        """Category labels including background (0)."""
        return int(self.category[self.category != IGNORE].max()) + 1


def _labels(item: ImageObjects, size: int, colours: list[str], n_categories: int):
    """One image's padded RGB, its category/colour label maps (later annotations paint over earlier),
    its image-level labels, its objects' rows but the image and its extent map (see ``LabelledSet``)."""
    image = load_image(item.image_path)
    grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
    category = np.zeros((size, size), np.uint8)
    colour = np.zeros((size, size), np.uint8)
    extent = np.zeros((size, size), np.uint8)
    present = np.zeros(n_categories + len(colours), np.float32)
    objects = []
    for category_id, attributes, mask_source, crowd in item.objects:
        original = mask_source.decode()
        mask = resize_and_pad_mask(original, size)
        extent[mask] = IGNORE if crowd else 1 + int(np.searchsorted(EXTENT_EDGES, original.mean()))
        name = attributes.get("colour")
        known = not (crowd or grey or name not in colours)
        category[mask] = IGNORE if crowd else category_id
        colour[mask] = colours.index(name) + 1 if known else IGNORE
        if not crowd:
            present[category_id - 1] = 1
        if not crowd and mask.any():
            ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            label = colours.index(name) if known else IGNORE
            objects.append([ys[0], xs[0], ys[-1] + 1, xs[-1] + 1, category_id - 1, label])
        if known:
            present[n_categories + colours.index(name)] = 1
    if grey:
        present[n_categories:] = -1
    objects = np.array(objects, np.int64).reshape(-1, 6)
    return resize_and_pad_image(image, size), category, colour, present, objects, extent


def load_labelled_set(sources: list[dict], size: int, threads: int = 1) -> LabelledSet:
    """The training images of every refer-layout source ``{"refer_dir", "split_by", "image_dir", "split"}``,
    decoded by ``threads`` threads (PIL and pycocotools release the GIL)."""
    items = [
        item
        for src in sources
        for item in split_images(src["refer_dir"], src["split_by"], src["image_dir"], src["split"])
    ]
    objects = [obj for item in items for obj in item.objects if not obj[3]]
    colours = sorted({a["colour"] for _, a, _, _ in objects if "colour" in a})
    n_categories = max(c for c, *_ in objects)
    label = partial(_labels, size=size, colours=colours, n_categories=n_categories)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        rows = list(tqdm(pool.map(label, items), total=len(items), disable=None))
    columns = list(zip(*rows, strict=True))
    images, category, colour, present, extent = (np.stack(columns[i]) for i in (0, 1, 2, 3, 5))
    objects = np.concatenate([np.insert(row[4], 0, k, axis=1) for k, row in enumerate(rows)])
    return LabelledSet(images, category, colour, present, colours, objects, extent)


def object_crops(data: LabelledSet, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``objects`` task's samples: per row of ``data.objects``, the square of side ``round(1.5 x``
    its box's longer side``)`` (at least 8 pixels) centred on the box, black beyond the image, resized
    (bilinear) to ``size x size`` -> ``crops (M, size, size, 3) uint8`` and ``labels (M, 2) int64``
    (category, colour)."""
    crops = np.empty((len(data.objects), size, size, 3), np.uint8)
    for j, (k, y0, x0, y1, x1, *_) in enumerate(data.objects):
        side = max(8, round(1.5 * max(y1 - y0, x1 - x0)))
        top, left = (y0 + y1 - side) // 2, (x0 + x1 - side) // 2
        square = Image.fromarray(data.images[k]).crop((left, top, left + side, top + side))  # black outside
        crops[j] = np.asarray(square.resize((size, size), Image.Resampling.BILINEAR))
    return crops, data.objects[:, 5:7].copy()


def dihedral(arrays: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Transform ``k`` (0-7) of the square's symmetry group applied to ``(B, S, S, ...)`` arrays:
    ``k % 4`` quarter turns, then a horizontal flip if ``k >= 4``."""
    out = [np.rot90(a, k % 4, axes=(1, 2)) for a in arrays]
    return [a[:, :, ::-1] for a in out] if k >= 4 else out


class Pretrainer(nn.Module):
    """A trunk body and the heads of its pretraining task; ``loss(images, targets)`` is the task's loss.

    ``body``: ``(B, 3, S, S)`` normalised float -> ``(B, C, S/8, S/8)``. ``dense``: 1x1-conv category and
    colour heads, and with ``extent`` a size-class head; ``classify``: ``fc`` (``C -> L >= n_labels``,
    e.g. the ResNet's own) on the average-pooled output (``pooling="avg"``), or its maximum over the cells
    (``"max"``); ``objects``: ``fc`` on the average-pooled output, its first ``n_categories - 1`` outputs
    the category, the next ``n_colours`` the colour.
    """

    def __init__(
        self,
        body: nn.Module,
        channels: int,
        task: str,
        n_categories: int,
        n_colours: int,
        fc=None,
        pooling: str = "avg",
        extent: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: one of {POOLINGS}")
        self.body, self.task, self.pooling = body, task, pooling
        if task == "dense":
            self.category = nn.Conv2d(channels, n_categories, 1)
            self.colour = nn.Conv2d(channels, n_colours + 1, 1)
            self.extent = nn.Conv2d(channels, len(EXTENT_EDGES) + 2, 1) if extent else None
        else:
            self.fc = fc
            self.n_category_labels = n_categories - 1
            self.n_labels = n_categories - 1 + n_colours
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, 3, S, S) uint8`` -> dense: category ``(B, K, S/8, S/8)``, colour ``(B, C + 1, S/8, S/8)``
        (and extent ``(B, 5, S/8, S/8)``) logits; classify: ``(B, n_labels)`` logits of the image-level
        labels; objects: category ``(B, n_categories - 1)`` and colour ``(B, n_colours)`` logits."""
        features = self.body((images.float() / 255 - self.mean) / self.std)
        if self.task == "dense":
            heads = [self.category, self.colour] + ([self.extent] if self.extent is not None else [])
            return tuple(head(features) for head in heads)
        if self.task == "objects":
            logits = self.fc(features.mean((2, 3)))
            return logits[:, : self.n_category_labels], logits[:, self.n_category_labels : self.n_labels]
        if self.pooling == "avg":
            return (self.fc(features.mean((2, 3)))[:, : self.n_labels],)
        n = self.n_labels
        cells = F.linear(features.permute(0, 2, 3, 1), self.fc.weight[:n], self.fc.bias[:n])  # (B, h, w, n)
        return (cells.amax((1, 2)),)

    def loss(self, logits: tuple[torch.Tensor, ...], targets: list[torch.Tensor]) -> torch.Tensor:
        """The task's loss (dense, objects: summed cross-entropies, ``IGNORE`` left out; classify: binary
        cross-entropy over the known labels) in float32."""
        if self.task in ("dense", "objects"):
            return sum(
                F.cross_entropy(lg.float(), tg, ignore_index=IGNORE) for lg, tg in zip(logits, targets, strict=True)
            )
        (present,) = targets
        known = present >= 0
        return F.binary_cross_entropy_with_logits(logits[0].float()[known], present[known])

    def correct(self, logits: tuple[torch.Tensor, ...], targets: list[torch.Tensor]) -> tuple[int, int]:
        """``(right, labelled)``: argmax right on labelled pixels (dense) or objects, or sign right on
        known labels (classify)."""
        if self.task in ("dense", "objects"):
            keep = [tg != IGNORE for tg in targets]
            right = sum(int((lg.argmax(1)[k] == tg[k]).sum()) for lg, tg, k in zip(logits, targets, keep, strict=True))
            return right, sum(int(k.sum()) for k in keep)
        (present,) = targets
        known = present >= 0
        return int(((logits[0] > 0).float()[known] == present[known]).sum()), int(known.sum())

    def trunk_state(self, backbone: str) -> dict[str, torch.Tensor]:
        """The trunk's weights as ``build_backbone(backbone, ...)`` loads them (heads dropped)."""
        body = {k: v.detach().cpu() for k, v in self.body.state_dict().items()}
        if backbone == "deeplab101":
            return {f"backbone.{k}": v for k, v in body.items()}
        if backbone == "resnet101":
            return {**body, **{f"fc.{k}": v.detach().cpu() for k, v in self.fc.state_dict().items()}}
        return body


def build_pretrainer(
    backbone: str,
    widths,
    n_categories: int,
    n_colours: int,
    task: str | None = None,
    pooling: str = "avg",
    extent: bool = False,
) -> Pretrainer:
    """The ``Pretrainer`` of ``backbone`` (``tiny`` with stage ``widths``, ``resnet101``, ``deeplab101``) for
    ``task`` (default: ``TASKS[backbone]``), randomly initialised as ``build_backbone`` builds its trunk.
    ``classify`` and ``objects`` on ``tiny`` get a new ``fc`` (``widths[-1] -> labels``), dropped with the heads;
    ``extent`` (dense only) adds the size-class head."""
    if backbone not in TASKS:
        raise InputError(f"backbones.{backbone}", f"no pretraining for this backbone ({', '.join(TASKS)})")
    task = task or TASKS[backbone]
    if task not in ALL_TASKS:
        raise InputError(f"backbones.{backbone}.pretrain.task", f"{task!r}: one of {', '.join(ALL_TASKS)}")
    if pooling not in POOLINGS:
        raise InputError(f"backbones.{backbone}.pretrain.pooling", f"{pooling!r}: one of {', '.join(POOLINGS)}")
    if extent and task != "dense":
        raise InputError(f"backbones.{backbone}.pretrain.extent", f"needs the dense task, not {task!r}")
    if backbone == "tiny":
        widths = tuple(widths or TINY_WIDTHS)
        fc = nn.Linear(widths[-1], n_categories - 1 + n_colours) if task != "dense" else None
        body, channels = tiny_body(widths), widths[-1]
    else:
        net = dilated_resnet101()
        body, channels, fc = resnet_trunk(net), RESNET_CHANNELS, net.fc
    return Pretrainer(body, channels, task, n_categories, n_colours, fc=fc, pooling=pooling, extent=extent)


def _samples(data: LabelledSet, task: str, object_size: int, extent: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """What a step draws from: ``arrays`` (images first; dense: with their label maps, the extent map last
    with ``extent``) and per-sample labels (classify: ``present``; objects: the crops' ``(category,
    colour)``; dense: unused)."""
    if task == "objects":
        crops, labels = object_crops(data, object_size)
        return [crops], labels
    return [data.images, data.category, data.colour] + ([data.extent] if extent else []), data.present


def _targets(task: str, arrays: list[np.ndarray], labels: np.ndarray, dev) -> list[torch.Tensor]:
    """The loss targets of a batch: classify ``[present (B, L)]``; objects ``[category (B,), colour (B,)]``;
    dense the label maps at the cell grid ``[(B, S/8, S/8)] * 2`` (3 with the extent map)."""
    if task == "classify":
        return [torch.from_numpy(labels).to(dev)]
    if task == "objects":
        return [torch.from_numpy(np.ascontiguousarray(c)).to(dev) for c in labels.T]
    return [torch.from_numpy(np.ascontiguousarray(cell_grid(a))).long().to(dev) for a in arrays[1:]]


def pretrain_trunk(
    backbone: str,
    sources: list[dict],
    out: str | Path,
    image_size: int,
    steps: int,
    batch_size: int,
    lr: float,
    widths=None,
    seed: int = 0,
    threads: int = 1,
    device: str | None = None,
    task: str | None = None,
    pooling: str = "avg",
    object_size: int | None = None,
    extent: bool = False,
    precision: str = "auto",
) -> dict:
    """Pretrain ``backbone``'s trunk for ``task`` (default: ``TASKS[backbone]``; ``classify`` pools with
    ``pooling``; ``objects`` crops to ``object_size``, default half of ``image_size`` rounded down to a
    multiple of 8; ``dense`` also learns each object pixel's size class with ``extent``) in ``precision``
    (``PRECISIONS``) on the sources' training images (``load_labelled_set``); write its weights to
    ``out`` (see the module doc).

    Returns ``{"task", "pooling", "extent", "precision" (as run: bf16 or fp32), "images", "categories",
    "colours", "loss_start", "loss_end", "accuracy"}`` (accuracy of the heads on the labelled pixels, or
    labels, of the last 5% of the steps' batches).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {PRECISIONS}")
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    dev = select_device(device)
    run_in = "bf16" if precision == "auto" and native_bf16(dev) else "fp32"
    data = load_labelled_set(sources, image_size, threads)
    model = build_pretrainer(backbone, widths, data.n_categories, len(data.colours), task, pooling, extent)
    object_size = object_size or max(8, image_size // 2 // 8 * 8)
    arrays_all, labels_all = _samples(data, model.task, object_size, extent)
    detail = {"classify": f", {pooling} pooling", "objects": f", {len(labels_all)} crops of {object_size} px"}
    log.info(
        "pretraining %s (%s%s, %s) on %d training images: %d categories, colours %s",
        backbone,
        model.task,
        detail.get(model.task, ""),
        run_in,
        len(data.images),
        data.n_categories - 1,
        data.colours,
    )
    model = model.to(dev, memory_format=torch.channels_last).train()  # faster convolutions on CPU and GPU
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - min(s, steps) / steps) ** 0.9)
    rng = np.random.default_rng(seed)
    losses, right, labelled = [], 0, 0
    for step in tqdm(range(steps), disable=None, mininterval=5):
        idx = rng.choice(len(arrays_all[0]), size=min(batch_size, len(arrays_all[0])), replace=False)
        arrays = dihedral([a[idx] for a in arrays_all], int(rng.integers(8)))
        images = torch.from_numpy(np.ascontiguousarray(arrays[0])).permute(0, 3, 1, 2).to(dev)  # channels-last
        targets = _targets(model.task, arrays, labels_all[idx], dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=run_in == "bf16"):
            logits = model(images)
        loss = model.loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step >= steps * 0.95:
            r, n = model.correct(logits, targets)
            right, labelled = right + r, labelled + n
        if (step + 1) % max(1, steps // 10) == 0:
            log.info("step %d/%d loss %.4f", step + 1, steps, np.mean(losses[-max(1, steps // 10) :]))
    with atomic_path(out) as tmp:
        torch.save(model.trunk_state(backbone), tmp)
    window = max(1, steps // 20)
    summary = {
        "task": model.task,
        "extent": extent,
        "precision": run_in,
        "pooling": pooling if model.task == "classify" else None,
        "images": len(data.images),
        **({"crops": len(labels_all), "object_size": object_size} if model.task == "objects" else {}),
        "categories": data.n_categories - 1,
        "colours": data.colours,
        "loss_start": round(float(np.mean(losses[:window])), 4),
        "loss_end": round(float(np.mean(losses[-window:])), 4),
        "accuracy": round(right / max(1, labelled), 4),
    }
    log.info("pretrained %s trunk -> %s: %s", backbone, out, summary)
    return summary
