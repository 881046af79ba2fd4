"""Word embedding + language-only LSTM (paper eq. 1), shared by the LSTM baseline and RMI."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from rmi.models.layers import lstm_parameters, lstm_scan
from rmi.text import PAD, SPECIALS

PAD_ID = SPECIALS.index(PAD)  # 0: token ids are left-padded with it


class WordLSTM(nn.Module):
    """Embedding (uniform +-0.08) and a ``BasicLSTMCell`` of ``lstm_dim`` over the words.

    ``<pad>`` (id 0) steps leave the state unchanged, per sample.
    """

    def __init__(self, vocab_size: int, embed_dim: int, lstm_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        nn.init.uniform_(self.embedding.weight, -0.08, 0.08)
        self.weight, self.bias = lstm_parameters(embed_dim, lstm_dim)
        self.embed_dim, self.lstm_dim = embed_dim, lstm_dim

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T >= 1) int64 -> (embeddings (B, T, De), hidden states (B, T, Dl))``.

        ``hidden[:, t]`` is ``h`` after step ``t`` (zero before a sample's first word, repeated over
        its padded steps), so ``hidden[:, -1]`` is the state after the last real word.
        """
        emb = self.embedding(tokens)
        w_x, w_h = self.weight[:, : self.embed_dim], self.weight[:, self.embed_dim :]
        x = torch.matmul(emb, w_x.t()) + self.bias  # input part of all steps at once: (B, T, 4n)
        states = lstm_scan(lambda t: x[:, t, None, :], w_h, tokens != PAD_ID)
        return emb, torch.stack([h[:, 0] for h in states], dim=1)
