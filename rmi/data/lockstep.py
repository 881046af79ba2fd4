"""The batches of K trainings read together (``rmi.lockstep``): one stacked batch per step.

``LockstepSampler`` zips the trainings' own ``StepBatchSampler``s (each its cache and seed: the
batches each would get alone); ``LockstepDataset`` reads each training's batch from its own
``ReferDataset``; ``stack_batches`` (the ``collate_fn``) stacks them, padded to common sizes, into
a batch whose tensors have a leading ``K`` (the layout of ``rmi.data.dataset`` otherwise):

* ``tokens (K, B, T)``: left-padded with ``<pad>`` (id 0) to the longest ``T``; the rows past a
  training's ``B_k`` are all ``<pad>`` (``<pad>`` steps leave the LSTM states unchanged);
* ``image_of (K, B)``: 0 on padding rows; ``images (K, U, 3, S, S)`` or ``trunk_features
  (K, U, C, S/8, S/8)``: zeros past a training's ``U_k`` images (no row points at them);
* ``target (K, B, 1, S/8, S/8)``: zeros on padding rows;
* ``row_mask (K, B) float32``: 1 on a real row, 0 on padding (``rmi.train.loss_fn`` leaves padding
  out of the loss and of the batch mean).

``B``, ``U`` and ``T`` are the largest of the step's batches: at batch 1 nothing is padded but the
tokens' leading ``<pad>`` columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from rmi.data.dataset import ReferDataset, StepBatchSampler


class LockstepDataset(Dataset):
    """K datasets read as one: ``__getitems__([rows of each])`` -> the K batches."""

    def __init__(self, datasets: Sequence[ReferDataset]):
        self.datasets = list(datasets)

    def __getitems__(self, rows: Sequence[list[int]]) -> list[dict]:
        return [d.__getitems__(r) for d, r in zip(self.datasets, rows, strict=True)]


class LockstepSampler(Sampler[list[list[int]]]):
    """The K samplers' batches step by step: ``[rows of training 0, ..., rows of training K-1]``."""

    def __init__(self, samplers: Sequence[StepBatchSampler]):
        self.samplers = list(samplers)

    def __iter__(self) -> Iterator[list[list[int]]]:
        return (list(rows) for rows in zip(*self.samplers, strict=True))  # endless samplers


def stack_batches(batches: list[dict]) -> dict:
    """K batches (``rmi.data.dataset`` layout) -> one stacked, padded batch (see the module doc)."""
    visual = "images" if "images" in batches[0] else "trunk_features"
    k = len(batches)
    b = max(len(x["image_of"]) for x in batches)
    t = max(x["tokens"].shape[1] for x in batches)
    u = max(len(x[visual]) for x in batches)
    first = batches[0]
    out = {
        "tokens": first["tokens"].new_zeros(k, b, t),
        "image_of": first["image_of"].new_zeros(k, b),
        visual: first[visual].new_zeros(k, u, *first[visual].shape[1:]),
        "target": first["target"].new_zeros(k, b, *first["target"].shape[1:]),
        "row_mask": torch.zeros(k, b),
    }
    for i, x in enumerate(batches):
        rows, width = x["tokens"].shape
        out["tokens"][i, :rows, t - width :] = x["tokens"]
        out["image_of"][i, :rows] = x["image_of"]
        out[visual][i, : len(x[visual])] = x[visual]
        out["target"][i, :rows] = x["target"]
        out["row_mask"][i, :rows] = 1
    return out
