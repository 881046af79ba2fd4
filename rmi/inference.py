"""Inference over a cached split: low-resolution logits for every expression, trunk once per image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from rmi.checkpoint import load_model
from rmi.data.dataset import ReferDataset, identity_collate, sequential_batches
from rmi.errors import InputError
from rmi.predictions import write_predictions
from rmi.train import model_inputs, select_device

log = logging.getLogger(__name__)


def check_compatible(cache_attrs: dict, cache_path: Path, info, model_path: Path) -> None:
    """A model can only read a cache made with its vocabulary and image size."""
    if cache_attrs.get("vocab_sha1") != info.vocab.digest():
        raise InputError(cache_path, f"was tokenized with another vocabulary than model {model_path}")
    if int(cache_attrs["image_size"]) != info.image_size:
        raise InputError(cache_path, f"image size {cache_attrs['image_size']} differs from model {model_path} ({info.image_size})")


@torch.no_grad()
def predict_logits(model, dataset: ReferDataset, batch_size: int, device: torch.device, threads: int = 1, amp: bool = True) -> np.ndarray:
    """Logits ``(N, S/8, S/8) float32`` for every expression row of ``dataset``, in row order."""
    n, size = len(dataset), dataset.cache.image_size // 8
    out = np.zeros((n, size, size), np.float32)
    on_cuda = device.type == "cuda"
    loader = DataLoader(
        dataset,
        batch_sampler=sequential_batches(dataset.cache.image_index, batch_size),
        collate_fn=identity_collate,
        num_workers=threads if on_cuda else 0,
        pin_memory=on_cuda,
    )
    with tqdm(total=n, unit="expr", disable=None, mininterval=2.0) as bar:
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and on_cuda):
                logits = model(**model_inputs(batch, device))
            out[batch["rows"].numpy()] = logits[:, 0].float().cpu().numpy()
            bar.update(len(batch["rows"]))
    return out


def predict_split(model_path: str | Path, cache_path: str | Path, out_path: str | Path, batch_size: int = 32, threads: int = 1, device: str | None = None) -> None:
    """Write ``results/predictions/.../{split}.h5`` (kind ``logits``) for one model and split."""
    torch.set_num_threads(max(1, threads))
    dev = select_device(device)
    model, info = load_model(model_path, dev)
    dataset = ReferDataset(cache_path, with_targets=False)
    check_compatible(dataset.cache.attrs, Path(cache_path), info, Path(model_path))
    log.info("predicting %d expressions of %s with %s on %s", len(dataset), cache_path, model_path, dev)
    logits = predict_logits(model, dataset, batch_size, dev, threads, amp=bool(info.hparams["train"].get("amp", True)))
    cache = dataset.cache
    write_predictions(
        out_path,
        sent_id=cache.sent_id,
        orig_hw=cache.image_hw[cache.image_index],
        image_size=cache.image_size,
        logits=logits,
        attrs={"model": str(model_path), "cache": str(cache_path), "backbone": info.backbone, "fusion": info.fusion},
    )
