"""Where a model runs: device choice and moving a batch's model inputs there (train and inference)."""

from __future__ import annotations

import torch

#: batch keys the model's ``forward`` takes (see ``rmi.data.dataset``)
MODEL_INPUT_KEYS = ("tokens", "image_of", "images", "trunk_features")


def select_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given, else CUDA when available, else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_inputs(batch: dict, device: torch.device) -> dict:
    """Move a batch's model inputs to ``device`` (non-blocking from pinned memory)."""
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUT_KEYS if k in batch}


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")
