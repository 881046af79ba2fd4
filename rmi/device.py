"""Where a model runs: device choice, moving a batch's model inputs there, and its float precision."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

#: batch keys the model's ``forward`` takes (see ``rmi.data.dataset``)
MODEL_INPUT_KEYS = ("tokens", "image_of", "images", "trunk_features")
#: batch keys the training loss takes besides the logits (``row_mask``: lockstep batches only, ``rmi.lockstep``)
LOSS_INPUT_KEYS = ("target", "row_mask")


def select_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given, else CUDA when available, else CPU; logged as ``device: cuda
    (CUDA_VISIBLE_DEVICES=2)`` or ``device: cpu`` (a GPU job's log shows which GPU it ran on)."""
    device = torch.device(preferred or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        log.info("device: %s (CUDA_VISIBLE_DEVICES=%s)", device, os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
    else:
        log.info("device: %s", device)
    return device


def model_inputs(batch: dict, device: torch.device, keys: tuple[str, ...] = MODEL_INPUT_KEYS) -> dict:
    """Move a batch's model inputs (or the other ``keys`` it has) to ``device`` (non-blocking from pinned memory)."""
    return {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}


def native_bf16(device: torch.device) -> bool:
    """True where bf16 convolutions and matmuls run natively: CUDA, or a CPU with AMX or AVX512-BF16
    (elsewhere CPU bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return True
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own (private) checks
    return device.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast(device: torch.device, enabled: bool, cache: bool = True) -> torch.autocast:
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere.

    ``cache=False`` for CUDA graph capture: weights are cast afresh inside the graph instead of
    being taken from a cache that outlives it.
    """
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda", cache_enabled=cache
    )


@contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """TF32 tensor-core math for float32 matmuls and cuDNN convolutions inside the block (CUDA).

    ``None`` keeps the current flags (PyTorch's defaults: convolutions TF32, matmuls IEEE fp32);
    the previous flags are restored on exit. TF32 rounds matmul inputs to a 10-bit mantissa and
    accumulates in fp32 (relative error ~1e-3 per product instead of ~1e-7).
    """
    if enabled is None:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
