"""Naive reference implementations, for tests and ``benchmarks/bench_mlstm.py`` only.

Written straight from the official code's description, independently of ``rmi.models``: the
TF ``BasicLSTMCell`` and, for the mLSTM and the baseline head, a 1x1 conv over the FULL
concatenation (recomputed at every step), with the same weights as the library modules.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache
def reference_spatial(height: int, width: int) -> Tensor:
    """``(8, H, W)``: the official ``generate_spatial_batch`` loop (cached; do not modify)."""
    out = torch.zeros(8, height, width)
    for h in range(height):
        for w in range(width):
            xmin, xmax = w / width * 2 - 1, (w + 1) / width * 2 - 1
            ymin, ymax = h / height * 2 - 1, (h + 1) / height * 2 - 1
            out[:, h, w] = torch.tensor(
                [xmin, ymin, xmax, ymax, (xmin + xmax) / 2, (ymin + ymax) / 2, 1 / width, 1 / height]
            )
    return out


def tf_basic_lstm_cell(pre: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """TF ``BasicLSTMCell`` on a pre-activation ``(B, 4n, ...)``, gates i, j, f, o, forget_bias 1."""
    n = c.shape[1]
    i, j, f, o = pre[:, :n], pre[:, n : 2 * n], pre[:, 2 * n : 3 * n], pre[:, 3 * n :]
    new_c = c * torch.sigmoid(f + 1.0) + torch.sigmoid(i) * torch.tanh(j)
    return torch.tanh(new_c) * torch.sigmoid(o), new_c


def naive_word_lstm(emb: Tensor, weight: Tensor, bias: Tensor, valid: Tensor) -> Tensor:
    """``emb (B, T, De)``, ``weight (4n, De + n)`` -> hidden after each step ``(B, T, n)``, pads skipped."""
    B, T, _ = emb.shape
    n = weight.shape[0] // 4
    h = c = emb.new_zeros(B, n)
    out = []
    for t in range(T):
        h_new, c_new = tf_basic_lstm_cell(torch.cat([emb[:, t], h], 1) @ weight.t() + bias, c)
        keep = valid[:, t, None]
        h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        out.append(h)
    return torch.stack(out, 1)


def naive_mlstm(weight: Tensor, bias: Tensor, visual: Tensor, words: Tensor, valid: Tensor) -> list[Tensor]:
    """Full 1x1 conv over ``concat[visual, words_t tiled, spatial, h]`` at every step.

    ``visual (B, Dv, H, W)`` (already one per expression), ``words (B, T, Dw)``, ``valid (B, T)``
    -> the hidden states ``(B, n, H, W)`` after each step.
    """
    B, _, H, W = visual.shape
    n = weight.shape[0] // 4
    spatial = reference_spatial(H, W).to(visual).expand(B, -1, -1, -1)
    h = c = visual.new_zeros(B, n, H, W)
    kernel = weight[:, :, None, None]
    out = []
    for t in range(words.shape[1]):
        tiled = words[:, t, :, None, None].expand(-1, -1, H, W)
        pre = F.conv2d(torch.cat([visual, tiled, spatial, h], 1), kernel, bias)
        h_new, c_new = tf_basic_lstm_cell(pre, c)
        keep = valid[:, t, None, None, None]
        h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        out.append(h)
    return out


def naive_baseline_head(mlp: torch.nn.Conv2d, classifier: torch.nn.Conv2d, h: Tensor, visual: Tensor) -> Tensor:
    """Baseline head on the concat: ``h (B, Dl)`` (raw word-LSTM state), ``visual (B, Dv, H, W)``
    -> ``(B, 1, H, W)``."""
    B, _, H, W = visual.shape
    lang = (h / h.norm(dim=1, keepdim=True).clamp_min(1e-6))[:, :, None, None].expand(-1, -1, H, W)
    spatial = reference_spatial(H, W).to(visual).expand(B, -1, -1, -1)
    return classifier(torch.relu(mlp(torch.cat([lang, visual, spatial], 1))))
