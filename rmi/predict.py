"""Segment one image from one expression with a trained model (``rmi predict``).

    rmi predict --checkpoint results/models/shapes/tiny_rmi/model.pt --image photo.jpg \\
        --expression "man in blue on the left" [--crf] --out mask.png [--overlay over.png]

The image (any size, RGB or grey) is resized-and-padded to the model's ``S`` exactly as in
training; the logits are bilinearly upsampled to ``S``, optionally refined with DenseCRF (config
defaults), and mapped back to the original size. ``--out`` gets a 0/255 single-channel PNG of
the original size; ``--overlay`` the image with the mask in red.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rmi.checkpoint import ModelInfo, load_model
from rmi.cli_common import run_cli
from rmi.crf import CRFParams, refine
from rmi.data.cache import load_image
from rmi.data.transforms import resize_and_pad_image, unpad_and_resize, upsample_logits
from rmi.errors import InputError
from rmi.fileio import atomic_path
from rmi.text import Vocab, has_word, tokenize

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One prediction at the original image size."""

    probability: np.ndarray  # (h, w) float32, before DenseCRF
    mask: np.ndarray  # (h, w) bool, after DenseCRF when asked
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
def predict_image(model, info: ModelInfo, image: np.ndarray, expression: str, crf: CRFParams | None = None) -> Prediction:
    """``image (h, w, 3) or (h, w) uint8`` + expression -> ``Prediction`` at ``(h, w)``."""
    ids, tokens, unknown = encode_expression(expression, info.vocab, info.max_tokens)
    size = info.image_size
    padded = resize_and_pad_image(image, size)
    device = next(model.parameters()).device
    logits = model(
        tokens=torch.from_numpy(ids)[None].to(device),
        image_of=torch.zeros(1, dtype=torch.int64, device=device),
        images=torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None].to(device),
    )
    prob_padded = torch.sigmoid(upsample_logits(logits.float(), size))[0, 0].cpu().numpy()
    h, w = image.shape[:2]
    probability = unpad_and_resize(prob_padded, h, w, mode="bilinear")
    if crf is None:
        mask = probability > 0.5
    else:
        mask = unpad_and_resize(refine(prob_padded, padded, crf), h, w, mode="nearest")
    return Prediction(probability, mask, tokens, unknown)


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Atomically write an ``(h, w)`` bool mask (as 0/255) or ``(h, w, 3) uint8`` image as PNG."""
    pixels = array.astype(np.uint8) * 255 if array.dtype == bool else array
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def main(argv=None) -> None:
    from rmi.figures import overlay

    p = argparse.ArgumentParser(prog="rmi predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="model.pt written by the train rule")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--expression", required=True, help="the referring expression")
    p.add_argument("--out", required=True, type=Path, help="mask PNG (0/255) at the image's size")
    p.add_argument("--overlay", type=Path, help="also write the image with the mask in red")
    p.add_argument("--crf", action="store_true", help="refine with DenseCRF (official settings)")
    p.add_argument("--vocab", type=Path, help="check that the model was trained with this vocab.txt")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    a = p.parse_args(argv)

    from rmi.train import select_device

    model, info = load_model(a.checkpoint, select_device(a.device))
    if a.vocab is not None and Vocab.load(a.vocab) != info.vocab:
        raise InputError(a.vocab, f"vocabulary mismatch: model {a.checkpoint} was trained with another vocabulary")
    image = load_image(a.image)
    pred = predict_image(model, info, image, a.expression, CRFParams() if a.crf else None)
    save_png(pred.mask, a.out)
    if a.overlay:
        save_png(overlay(image, pred.mask), a.overlay)
    unknown = f" ({', '.join(pred.unknown)})" if pred.unknown else ""
    print(f"{len(pred.unknown)} of {len(pred.tokens)} words unknown to the model's vocabulary{unknown}")
    print(f"mask: {a.out} ({pred.mask.shape[1]}x{pred.mask.shape[0]}, {pred.mask.mean():.1%} foreground)")


if __name__ == "__main__":
    run_cli(main)
