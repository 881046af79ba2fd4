"""Trained-model files (``model.pt``): self-contained (weights, architecture, vocabulary, sizes).

``model.pt`` is a ``torch.save``d dict readable with ``weights_only=True``:
``format, backbone, fusion, model_cfg, backbone_cfg, vocab (list of words), image_size,
max_tokens, hparams, steps, state_dict``. Loading rebuilds the architecture without
pretrained weights (every weight is in ``state_dict``), so it works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rmi.errors import InputError
from rmi.fileio import atomic_path
from rmi.text import Vocab

FORMAT = "rmi-model/1"


@dataclass
class ModelInfo:
    """What a model file says about itself besides the weights."""

    backbone: str
    fusion: str
    model_cfg: dict
    backbone_cfg: dict
    vocab: Vocab
    image_size: int
    max_tokens: int
    hparams: dict
    steps: int


def save_model(path: str | Path, model: torch.nn.Module, info: ModelInfo) -> None:
    """Atomically write ``model.pt``."""
    payload = {
        "format": FORMAT,
        "backbone": info.backbone,
        "fusion": info.fusion,
        "model_cfg": dict(info.model_cfg),
        "backbone_cfg": dict(info.backbone_cfg),
        "vocab": list(info.vocab.words),
        "image_size": int(info.image_size),
        "max_tokens": int(info.max_tokens),
        "hparams": info.hparams,
        "steps": int(info.steps),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """Read ``model.pt`` -> (model in eval mode on ``device``, its info)."""
    from rmi.models.segmenter import build_model

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model checkpoint is missing")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise InputError(path, f"cannot read model checkpoint ({type(err).__name__}: {err})") from err
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != FORMAT:
        raise InputError(path, f"not an rmi model file (format {found!r}, expected {FORMAT!r})")
    info = ModelInfo(
        backbone=payload["backbone"],
        fusion=payload["fusion"],
        model_cfg=payload["model_cfg"],
        backbone_cfg=payload["backbone_cfg"],
        vocab=Vocab(payload["vocab"]),
        image_size=payload["image_size"],
        max_tokens=payload["max_tokens"],
        hparams=payload["hparams"],
        steps=payload["steps"],
    )
    offline_cfg = {**info.backbone_cfg, "pretrained": False, "weights_path": None}
    model = build_model(info.backbone, info.fusion, len(info.vocab), info.model_cfg, offline_cfg)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:  # e.g. an embedding whose rows do not match the stored vocabulary
        problem = " ".join(str(err).split())[:300]
        raise InputError(path, f"weights do not fit the stored architecture/vocabulary ({problem})") from err
    return model.to(device).eval(), info
