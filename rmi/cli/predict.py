"""Segment one image from one expression with a trained model (``rmi predict``).

    rmi predict --model results/models/shapes/tiny_rmi/model.pt --image photo.jpg \\
        --expression "man in blue on the left" [--crf] --out mask.png [--overlay over.png]

The image (any size, RGB or grey) is resized-and-padded to the model's ``S`` exactly as in
training; the logits are bilinearly upsampled to ``S``, optionally refined with DenseCRF (config
defaults), and mapped back to the original size. ``--out`` gets a 0/255 single-channel PNG of
the original size; ``--overlay`` the image with the rest dimmed and the mask outlined (``rmi.figures.overlay``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from rmi.cli.common import run_cli
from rmi.crf import CRFParams
from rmi.data.cache import load_image
from rmi.device import select_device
from rmi.errors import InputError
from rmi.figures import overlay
from rmi.fileio import atomic_path
from rmi.inference import predict_image
from rmi.model_file import load_model
from rmi.text import Vocab


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Atomically write an ``(h, w)`` bool mask (as 0/255) or ``(h, w, 3) uint8`` image as PNG."""
    pixels = array.astype(np.uint8) * 255 if array.dtype == bool else array
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def main(argv=None) -> None:
    """``rmi predict``: parse ``argv``, write the mask (and overlay) PNGs, print a summary."""
    p = argparse.ArgumentParser(
        prog="rmi predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        required=True,
        type=Path,
        help="model.pt written by the train rule (--checkpoint: the same)",
    )
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--expression", required=True, help="the referring expression")
    p.add_argument("--out", required=True, type=Path, help="mask PNG (0/255) at the image's size")
    p.add_argument("--overlay", type=Path, help="also write the image with all but the mask dimmed")
    p.add_argument("--crf", action="store_true", help="refine with DenseCRF (official settings)")
    p.add_argument("--vocab", type=Path, help="check that the model was trained with this vocab.txt")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    a = p.parse_args(argv)

    model, info = load_model(a.model, select_device(a.device))
    if a.vocab is not None and Vocab.load(a.vocab) != info.vocab:
        raise InputError(a.vocab, f"vocabulary mismatch: model {a.model} was trained with another vocabulary")
    image = load_image(a.image)
    pred = predict_image(model, info, image, a.expression, CRFParams() if a.crf else None)
    save_png(pred.mask, a.out)
    if a.overlay:
        save_png(overlay(image, pred.mask), a.overlay)
    unknown = f" ({', '.join(pred.unknown)})" if pred.unknown else ""
    print(f"{len(pred.unknown)} of {len(pred.tokens)} words unknown to the model's vocabulary{unknown}")
    print(f"mask: {a.out} ({pred.mask.shape[1]}x{pred.mask.shape[0]}, {pred.mask.mean():.1%} foreground)")


if __name__ == "__main__":
    run_cli(main, level=logging.WARNING)  # as `rmi predict`: results on stdout, errors on stderr
