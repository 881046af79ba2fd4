"""LSTM baseline (paper section 3.2): the sentence is encoded alone, then fused with the image.

Per pixel ``concat[l2(h_T) tiled, visual, spatial 8] -> 1x1 conv mlp_dim -> ReLU -> 1x1 conv 1``.
The first conv is evaluated as ``W_v v + W_s s + b`` once per image plus ``W_l l2(h)`` (a vector
per expression, broadcast over pixels), which equals the conv on the concat.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from rmi.models.language import WordLSTM
from rmi.models.layers import conv1x1, image_term, l2_normalize
from rmi.models.spatial import SPATIAL_DIM, spatial_features


class LSTMFusion(nn.Module):
    """Word LSTM + the two-layer 1x1-conv head of the baseline."""

    def __init__(self, vocab_size: int, visual_dim: int, embed_dim: int, lstm_dim: int, mlp_dim: int):
        super().__init__()
        self.language = WordLSTM(vocab_size, embed_dim, lstm_dim)
        self.mlp = conv1x1(lstm_dim + visual_dim + SPATIAL_DIM, mlp_dim)
        self.classifier = conv1x1(mlp_dim, 1)

    def forward(self, tokens: Tensor, visual: Tensor, image_of: Tensor) -> Tensor:
        """``tokens (B, T >= 1)``, ``visual (U, Dv, H, W)`` (L2-normalised), ``image_of (B,)`` -> ``(B, 1, H, W)``."""
        _, hidden = self.language(tokens)
        return self._head(hidden[:, -1:], visual, image_of)[:, 0]

    def forward_steps(self, tokens: Tensor, visual: Tensor, image_of: Tensor) -> dict[str, Tensor]:
        """As ``forward``, with the head on ``h_t`` after every step: ``{"logits": (B, T, 1, H, W)}``."""
        _, hidden = self.language(tokens)
        return {"logits": self._head(hidden, visual, image_of)}

    def _head(self, hidden: Tensor, visual: Tensor, image_of: Tensor) -> Tensor:
        """``hidden (B, K, Dl)`` word-LSTM states -> ``(B, K, 1, H, W)`` logits, one map per state."""
        dl, dv = self.language.lstm_dim, visual.shape[1]
        height, width = visual.shape[-2:]
        w = self.mlp.weight.flatten(1)  # (M, Dl + Dv + 8)
        spatial = spatial_features(height, width, visual.device)
        pixels = image_term(w[:, dl : dl + dv], w[:, dl + dv :], self.mlp.bias, visual, spatial)[image_of]
        words = torch.matmul(l2_normalize(hidden, -1), w[:, :dl].t())  # (B, K, M)
        x = torch.relu(pixels[:, None] + words[..., None])  # (B, K, M, H*W)
        logits = self.classifier(x.flatten(0, 1).unflatten(-1, (height, width)))
        return logits.unflatten(0, x.shape[:2])
