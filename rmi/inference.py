"""Running a trained model: every expression of a cached split (rule predict), or one image.

``predict_split`` writes the split's low-resolution logits, the trunk run once per image;
``predict_image`` segments one image from one expression (the ``rmi predict`` command)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from rmi.crf import CRFParams, refine
from rmi.data.dataset import ReferDataset, identity_collate, sequential_batches
from rmi.data.transforms import resize_and_crop, resize_and_pad_image, unpad_and_resize, upsample_logits
from rmi.device import autocast, model_inputs, select_device, tf32
from rmi.errors import InputError
from rmi.model_file import ModelInfo, load_model
from rmi.prediction_file import probability, threshold_logits, write_predictions
from rmi.text import Vocab, has_word, tokenize

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(
    model, dataset: ReferDataset, batch_size: int, device: torch.device, threads: int = 1, amp: bool = True
) -> np.ndarray:
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
            with autocast(device, amp):
                logits = model(**model_inputs(batch, device))
            out[batch["rows"].numpy()] = logits[:, 0].float().cpu().numpy()
            bar.update(len(batch["rows"]))
    return out


def predict_split(
    model_path: str | Path,
    cache_path: str | Path,
    out_path: str | Path,
    batch_size: int = 32,
    threads: int = 1,
    device: str | None = None,
) -> None:
    """Write ``results/predictions/.../{split}.h5`` (kind ``logits``) for one model and split."""
    torch.set_num_threads(max(1, threads))
    dev = select_device(device)
    model, info = load_model(model_path, dev)
    dataset = ReferDataset(cache_path, with_targets=False)
    dataset.cache.check_compatible(info.vocab, info.image_size, f"model {model_path}")
    log.info("predicting %d expressions of %s with %s on %s", len(dataset), cache_path, model_path, dev)
    train = info.hparams["train"]
    with tf32(train.get("tf32")):
        logits = predict_logits(model, dataset, batch_size, dev, threads, amp=bool(train["amp"]))
    cache = dataset.cache
    write_predictions(
        out_path,
        sent_id=cache.sent_id,
        orig_hw=cache.image_hw[cache.image_index],
        image_size=cache.image_size,
        logits=logits,
        attrs={"model": str(model_path), "cache": str(cache_path), "backbone": info.backbone, "fusion": info.fusion},
    )


@dataclass
class Prediction:
    """One prediction at the original image size."""

    probability: np.ndarray  # (h, w) float32, before DenseCRF (to look at; the mask does not threshold it)
    mask: np.ndarray  # (h, w) bool as the official test loop makes it, after DenseCRF when asked
    tokens: list[str]  # the tokens the model read (at most T)
    unknown: list[str]  # those not in the model's vocabulary (read as <unk>)


def encode_expression(expression: str, vocab: Vocab, max_tokens: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Expression -> ``(ids (T,) int64 left-padded, tokens read, unknown tokens)``.

    Raises ``InputError`` for an expression without any word (empty, blank, punctuation only).
    """
    tokens = tokenize(expression)
    if not has_word(tokens):
        raise InputError("--expression", f"empty expression {expression!r}: it holds no word")
    tokens = tokens[:max_tokens]
    unknown = [t for t in tokens if t not in vocab.index]
    return vocab.encode_tokens(tokens, max_tokens), tokens, unknown


@torch.no_grad()
def predict_image(
    model, info: ModelInfo, image: np.ndarray, expression: str, crf: CRFParams | None = None
) -> Prediction:
    """``image (h, w, 3) or (h, w) uint8`` + expression -> ``Prediction`` at ``(h, w)``.

    The mask is the evaluation's (``PredictionReader.original_mask``): the S x S prediction
    (upsampled logits ``>= 1e-9``, or the DenseCRF labels) mapped back with ``resize_and_crop``.
    """
    ids, tokens, unknown = encode_expression(expression, info.vocab, info.max_tokens)
    size = info.image_size
    padded = resize_and_pad_image(image, size)
    device = next(model.parameters()).device
    logits = model(
        tokens=torch.from_numpy(ids)[None].to(device),
        image_of=torch.zeros(1, dtype=torch.int64, device=device),
        images=torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None].to(device),
    )
    up = upsample_logits(logits[0, 0].float().cpu().numpy(), size)  # as PredictionReader does
    prob_padded = probability(up)
    binary = threshold_logits(up) if crf is None else refine(prob_padded, padded, crf)
    h, w = image.shape[:2]
    prob = unpad_and_resize(prob_padded, h, w, mode="bilinear")
    return Prediction(prob, resize_and_crop(binary, h, w), tokens, unknown)
