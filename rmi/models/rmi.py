"""RMI (paper section 3.3): a convolutional multimodal LSTM reads the words one by one.

At each real word ``t`` the mLSTM (one ``BasicLSTMCell`` of ``n`` units shared over pixels) gets
per pixel ``concat[visual Dv, w_t De (raw embedding), l2(h_t) Dl (word LSTM), spatial 8]``.
After the last word: ``squash`` (an atanh), ReLU, 1x1 conv -> 1 logit.

Efficiency: the gate pre-activation ``W [v; w_t; l_t; s; h]`` is split by columns. ``W_v v + W_s s
+ b`` is the same at every step: it is computed once per image (``U`` images, gathered to the
``B`` expressions); per step only ``W_wl [w_t; l_t]`` (a vector broadcast over pixels) and the
recurrent ``W_h h`` (a 1x1 conv) are added.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from torch import Tensor

from rmi.models.language import PAD_ID, WordLSTM
from rmi.models.layers import conv1x1, image_term, l2_normalize, lstm_parameters, lstm_scan
from rmi.models.spatial import SPATIAL_DIM, spatial_features


def squash(h: Tensor) -> Tensor:
    """The official atanh-like map ``0.5 * (log(1.001 + h) - log(1.001 - h))``, elementwise."""
    return 0.5 * (torch.log(1.001 + h) - torch.log(1.001 - h))


class MultimodalLSTM(nn.Module):
    """mLSTM: weight ``(4n, Dv + Dw + 8 + n)`` over ``[visual; words; spatial; h]``, bias ``(4n,)``.

    ``Dw = De + Dl`` (word embedding and normalised word-LSTM state, in that order).
    """

    def __init__(self, visual_dim: int, word_dim: int, hidden_dim: int):
        super().__init__()
        self.visual_dim, self.word_dim, self.hidden_dim = visual_dim, word_dim, hidden_dim
        self.weight, self.bias = lstm_parameters(visual_dim + word_dim + SPATIAL_DIM, hidden_dim)

    def steps(self, visual: Tensor, image_of: Tensor, words: Tensor, valid: Tensor) -> Iterator[Tensor]:
        """Yield the hidden state ``(B, n, H, W)`` after each step ``t = 0..T-1``.

        ``visual (U, Dv, H, W)``, ``image_of (B,)`` int64 into the ``U`` images, ``words (B, T, Dw)``,
        ``valid (B, T)`` bool (false: padded step, state unchanged).
        """
        dv, dw = self.visual_dim, self.word_dim
        height, width = visual.shape[-2:]
        w = self.weight
        spatial = spatial_features(height, width, visual.device)
        pixels = image_term(w[:, :dv], w[:, dv + dw : dv + dw + SPATIAL_DIM], self.bias, visual, spatial)
        # (B, H*W, 4n), pixel-major in memory: every step then adds and multiplies contiguous rows
        pixels = pixels.transpose(1, 2).contiguous()[image_of]
        lang = torch.matmul(words, w[:, dv : dv + dw].t())  # (B, T, 4n)
        w_h = w[:, dv + dw + SPATIAL_DIM :]
        for h in lstm_scan(lambda t: pixels + lang[:, t, None, :], w_h, valid):
            yield h.transpose(1, 2).unflatten(-1, (height, width))


class RMIFusion(nn.Module):
    """Word LSTM (lower layer) + mLSTM (upper layer) + the 1x1-conv classifier."""

    def __init__(self, vocab_size: int, visual_dim: int, embed_dim: int, lstm_dim: int, mlstm_dim: int):
        super().__init__()
        self.language = WordLSTM(vocab_size, embed_dim, lstm_dim)
        self.mlstm = MultimodalLSTM(visual_dim, embed_dim + lstm_dim, mlstm_dim)
        self.classifier = conv1x1(mlstm_dim, 1)

    def forward(self, tokens: Tensor, visual: Tensor, image_of: Tensor) -> Tensor:
        """``tokens (B, T >= 1)``, ``visual (U, Dv, H, W)`` (L2-normalised), ``image_of (B,)`` -> ``(B, 1, H, W)``."""
        *_, h = self._states(tokens, visual, image_of)
        return self.classifier(torch.relu(squash(h)))

    def forward_steps(self, tokens: Tensor, visual: Tensor, image_of: Tensor) -> dict[str, Tensor]:
        """Head after every step: ``{"logits": (B, T, 1, H, W), "response": (B, T, H, W)}``.

        ``response`` is the channel mean of ``squash(h_t)`` (paper Fig. 6 before upsampling).
        """
        logits, response = [], []
        for h in self._states(tokens, visual, image_of):
            s = squash(h)
            logits.append(self.classifier(torch.relu(s)))
            response.append(s.mean(1))
        return {"logits": torch.stack(logits, 1), "response": torch.stack(response, 1)}

    def _states(self, tokens: Tensor, visual: Tensor, image_of: Tensor) -> Iterator[Tensor]:
        """mLSTM hidden states ``(B, n, H, W)`` after each of the ``T`` steps."""
        emb, hidden = self.language(tokens)
        words = torch.cat([emb, l2_normalize(hidden, -1)], dim=-1)
        return self.mlstm.steps(visual, image_of, words, tokens != PAD_ID)
