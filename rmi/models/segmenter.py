"""The full model: backbone trunk -> visual projection -> L2 norm -> fusion (LSTM baseline or RMI).

A batch holds ``U`` unique images and ``B >= U`` expressions; ``image_of (B,)`` maps each
expression to its image. The trunk and the projection run on the ``U`` images only (or are
skipped when cached ``trunk_features`` are given).
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from rmi.errors import InputError
from rmi.models.backbones import Trunk, build_backbone
from rmi.models.language import PAD_ID
from rmi.models.layers import l2_normalize
from rmi.models.lstm_baseline import LSTMFusion
from rmi.models.rmi import RMIFusion

FUSIONS = ("lstm", "rmi")


def first_word_column(tokens: Tensor) -> int:
    """First column of ``tokens (..., T)`` (``(B, T)``, or ``(K, B, T)`` in lockstep) holding a real word
    in some row; ``T - 1`` when none does.

    The columns before it are ``<pad>`` in every row. On a CUDA tensor this waits for the device.
    """
    first = (tokens != PAD_ID).flatten(0, -2).any(0).nonzero()
    return int(first[0]) if len(first) else tokens.shape[-1] - 1


class ReferringSegmenter(nn.Module):
    """``trunk`` (frozen or not), ``visual_proj`` (1x1 conv to ``Dv``) and ``fusion``."""

    def __init__(self, trunk: Trunk, visual_proj: nn.Conv2d, fusion: LSTMFusion | RMIFusion):
        super().__init__()
        self.trunk = trunk
        self.visual_proj = visual_proj
        self.fusion = fusion

    @property
    def frozen_trunk(self) -> bool:
        """True when the trunk is frozen (no grads, eval-mode BatchNorm, run under ``no_grad``)."""
        return self.trunk.frozen

    def visual(self, images: Tensor | None = None, trunk_features: Tensor | None = None) -> Tensor:
        """``images (U, 3, S, S) uint8`` or ``trunk_features (U, C, S/8, S/8)`` -> ``(U, Dv, S/8, S/8)``.

        The visual feature: projection of the trunk output, L2-normalised per pixel.
        """
        if (images is None) == (trunk_features is None):
            raise ValueError("give exactly one of images or trunk_features")
        features = self.trunk(images) if trunk_features is None else trunk_features
        return l2_normalize(self.visual_proj(features.to(self.visual_proj.weight.dtype)), 1)

    def forward(
        self,
        tokens: Tensor,
        image_of: Tensor,
        images: Tensor | None = None,
        trunk_features: Tensor | None = None,
        trim_pads: bool = True,
    ) -> Tensor:
        """``tokens (B, T) int64`` left-padded with 0, ``image_of (B,) int64`` -> logits ``(B, 1, S/8, S/8)``.

        Steps before the batch's first real word are not run (they would leave the zero state).
        ``trim_pads=False``: ``tokens`` are already cut at ``first_word_column`` (finding it reads the
        device, which a CUDA graph capture forbids).
        """
        if trim_pads:
            tokens = tokens[:, first_word_column(tokens) :]
        return self.fusion(tokens, self.visual(images, trunk_features), image_of)

    def forward_steps(
        self, tokens: Tensor, image_of: Tensor, images: Tensor | None = None, trunk_features: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The prediction "until after word t" for every step (paper Fig. 1, 5, 6).

        ``{"logits": (B, T, 1, S/8, S/8)}`` and, for RMI, ``"response": (B, T, S/8, S/8)`` (channel
        mean of the squashed mLSTM state). Padded steps repeat the previous state; the last step
        equals ``forward``.
        """
        return self.fusion.forward_steps(tokens, self.visual(images, trunk_features), image_of)

    def param_groups(self, lr: float, weight_decay: float, bias_lr_mult: float) -> list[dict]:
        """Optimizer groups over the trainable parameters, each parameter exactly once.

        ``conv_weights``: every trainable conv weight (visual projection, MLP, classifier, and the
        trunk's convs when it is not frozen), ``lr`` with ``weight_decay``. ``conv_biases``:
        ``lr * bias_lr_mult``, no decay. ``other``: LSTM/mLSTM weights and biases, embedding,
        BatchNorm affine parameters: ``lr``, no decay. Empty groups are left out.
        """
        conv_weights, conv_biases = [], []
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                conv_weights.append(module.weight)
                if module.bias is not None:
                    conv_biases.append(module.bias)
        convs = {id(p) for p in conv_weights + conv_biases}
        other = [p for p in self.parameters() if id(p) not in convs]
        groups = [
            {"name": "conv_weights", "params": conv_weights, "lr": lr, "weight_decay": weight_decay},
            {"name": "conv_biases", "params": conv_biases, "lr": lr * bias_lr_mult, "weight_decay": 0.0},
            {"name": "other", "params": other, "lr": lr, "weight_decay": 0.0},
        ]
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
        return [g for g in groups if g["params"]]


def build_model(
    backbone: str,
    fusion: str,
    vocab_size: int,
    model_cfg: dict,
    backbone_cfg: dict,
    weights_path: str | None = None,
) -> ReferringSegmenter:
    """Build ``{backbone}_{fusion}``; ``model_cfg`` = config ``model:``, ``backbone_cfg`` = ``backbones.<name>``.

    ``weights_path`` (a local torchvision state_dict) overrides ``backbone_cfg["weights_path"]``.
    Raises ``InputError`` for an unknown backbone/fusion, unusable weights or missing
    pretrained weights offline.
    """
    dims = {k: int(model_cfg[k]) for k in ("visual_dim", "embed_dim", "lstm_dim", "mlstm_dim", "mlp_dim")}
    if fusion == "lstm":
        head = LSTMFusion(vocab_size, dims["visual_dim"], dims["embed_dim"], dims["lstm_dim"], dims["mlp_dim"])
    elif fusion == "rmi":
        head = RMIFusion(vocab_size, dims["visual_dim"], dims["embed_dim"], dims["lstm_dim"], dims["mlstm_dim"])
    else:
        raise InputError("fusions", f"unknown fusion {fusion!r} (expected one of {', '.join(FUSIONS)})")
    trunk, visual_proj = build_backbone(backbone, dims["visual_dim"], backbone_cfg, weights_path)
    return ReferringSegmenter(trunk, visual_proj, head)
