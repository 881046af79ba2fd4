"""PyTorch access to a cache split: batches that hold each image once, and a resumable sampler.

A batch is a dict:

* ``tokens``  ``(B, T) int64``  left-padded token ids
* ``image_of`` ``(B,) int64``   which of the U images each expression belongs to
* ``images``  ``(U, 3, S, S) uint8``  the unique padded images of the batch (or, when a
  feature file is given, ``trunk_features (U, C, S/8, S/8) float32`` instead)
* ``target``  ``(B, 1, S/8, S/8) float32``  the padded mask sampled at the cell grid
  (``mask[8i, 8j]``, stored in the cache as ``ref_targets``)
* ``rows``    ``(B,) int64``  expression rows in the cache (to write predictions in order)

The frozen trunk runs on the U images only; ``image_of`` gathers its output per expression.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rmi.data.cache import CacheReader
from rmi.data.h5 import LazyH5
from rmi.errors import InputError


class FeatureReader(LazyH5):
    """Reader of a trunk-feature file (``features (N_img, C, h, w) fp16``), opened lazily per process.

    Features that take at most ``IN_MEMORY_BYTES`` as float32 (the demo's: a few hundred MB) are read
    into memory once, as float32 (converting fp16 batch by batch costs a millisecond a batch); larger ones
    (ResNet features at S = 320: 6.5 MB an image in fp16) are read image by image.
    """

    IN_MEMORY_BYTES = 1 << 30

    def __init__(self, path: str | Path, n_images: int):
        super().__init__(path, "feature file")
        ds = self.file["features"]
        if len(ds) != n_images:
            raise InputError(self.path, f"holds features of {len(ds)} images, the cache has {n_images}")
        self.in_memory = ds[()].astype(np.float32) if ds.size * 4 <= self.IN_MEMORY_BYTES else None

    def read(self, image_indices: Sequence[int]) -> np.ndarray:
        """``(U, C, h, w) float32`` features of the given images."""
        if self.in_memory is not None:
            return self.in_memory[np.asarray(image_indices, np.int64)]
        ds = self.file["features"]
        return np.stack([ds[int(i)] for i in image_indices]).astype(np.float32)


class ReferDataset(Dataset):
    """Expressions of one cached split; ``__getitems__`` builds a whole batch (see module doc)."""

    def __init__(self, cache_path: str | Path, features_path: str | Path | None = None, with_targets: bool = True):
        self.cache = CacheReader(cache_path)
        self.features = FeatureReader(features_path, self.cache.n_images) if features_path else None
        self.targets = self.cache.targets() if with_targets else None

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, row: int) -> dict:
        return self.__getitems__([row])

    def __getitems__(self, rows: Sequence[int]) -> dict:
        rows = np.asarray(rows, dtype=np.int64)
        img_idx = self.cache.image_index[rows]
        unique, image_of = np.unique(img_idx, return_inverse=True)
        batch = {
            "rows": torch.from_numpy(rows),
            "tokens": torch.from_numpy(self.cache.tokens[rows].astype(np.int64)),
            "image_of": torch.from_numpy(image_of.astype(np.int64).reshape(-1)),
        }
        if self.features is not None:
            batch["trunk_features"] = torch.from_numpy(self.features.read(unique))
        else:
            images = self.cache.images(unique)
            batch["images"] = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        if self.targets is not None:
            masks = self.targets[self.cache.sent_ref[rows]]
            batch["target"] = torch.from_numpy(masks.astype(np.float32))[:, None]
        return batch


def identity_collate(batch: dict) -> dict:
    """The dataset already returns a collated batch (its ``__getitems__``)."""
    return batch


class StepBatchSampler(Sampler[list[int]]):
    """An endless, deterministic stream of batches of expression rows, resumable at any step.

    Epoch ``e`` is drawn from ``default_rng([seed, e])`` and has ``ceil(N / batch_size)`` batches, so
    step ``k`` is batch ``k % n`` of epoch ``k // n``. The order within an epoch:

    * ``group_by_image`` (default): images shuffled, each image's expressions consecutive, so a batch holds few
      distinct images (the frozen trunk runs once per image);
    * otherwise uniform: expressions shuffled independently, as the official data reader does, or,
      given ``lengths`` (tokens per row), length-bucketed batches: the shuffled rows are cut into pools of
      ``POOL_BATCHES`` batches, each pool sorted by length and cut into batches, and the full batches
      shuffled (a short final batch stays last). A batch then holds expressions of similar length,
      so the model skips more of the left padding (it only runs the steps after the batch's first word).
    """

    POOL_BATCHES = 50

    def __init__(
        self,
        image_index: np.ndarray,
        batch_size: int,
        seed: int,
        group_by_image: bool = True,
        start_step: int = 0,
        lengths: np.ndarray | None = None,
    ):
        if len(image_index) == 0:
            raise ValueError("no expressions to sample")
        if group_by_image and lengths is not None:
            raise ValueError("group_by_image and length buckets exclude each other")
        self.image_index = np.asarray(image_index)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batches_per_epoch = -(-len(self.image_index) // self.batch_size)
        self._groups = None
        if group_by_image:
            order = np.argsort(self.image_index, kind="stable")
            bounds = np.flatnonzero(np.diff(self.image_index[order])) + 1
            self._groups = np.split(order, bounds)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Expression rows of one epoch, in sampling order (batch ``b`` = rows ``[b*B, (b+1)*B)``)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self._groups is not None:
            return np.concatenate([rng.permutation(self._groups[g]) for g in rng.permutation(len(self._groups))])
        order = rng.permutation(len(self.image_index))
        if self.lengths is None:
            return order
        pool = self.batch_size * self.POOL_BATCHES
        order = np.concatenate(
            [p[np.argsort(self.lengths[p], kind="stable")] for p in np.split(order, range(pool, len(order), pool))]
        )
        n_full = len(order) // self.batch_size
        batches = order[: n_full * self.batch_size].reshape(n_full, self.batch_size)[rng.permutation(n_full)]
        return np.concatenate([batches.ravel(), order[n_full * self.batch_size :]])

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_step, self.batches_per_epoch)
        while True:
            order = self.epoch_order(epoch)
            for b in range(offset, self.batches_per_epoch):
                yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
            epoch, offset = epoch + 1, 0


def sequential_batches(image_index: np.ndarray, batch_size: int) -> list[list[int]]:
    """All rows once, grouped by image (for inference): batches of ``batch_size`` rows."""
    order = np.argsort(np.asarray(image_index), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
