"""Backbones: a trunk ``(U, 3, S, S) uint8 -> (U, C, S/8, S/8)`` and a 1x1 visual projection.

* ``resnet101`` (R): torchvision ResNet-101, conv4/conv5 dilated (output stride 8), ImageNet
  weights; the visual projection is the ImageNet fc1000 applied as a 1x1 conv (trainable), so
  ``visual_dim`` must be 1000.
* ``deeplab101`` (D): the ResNet-101 trunk of torchvision's DeepLabV3-ResNet101
  (COCO_WITH_VOC_LABELS_V1, output stride 8); a new Xavier 1x1 conv 2048 -> ``visual_dim``.
* ``tiny``: a small encoder-decoder of conv-BN-ReLU blocks (``TinyBody``, ``widths`` default
  32-64-128 channels) for the CPU demo: random init, or a ``weights_path`` written by the demo's
  dense pretraining (``rmi.pretrain``, rule ``pretrain_backbone``).

Weights: a local torchvision state_dict file (``weights_path``) wins; else, if ``pretrained``,
torchvision's weights API (network or its cache); ``pretrained: false`` means random init.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rmi.errors import InputError
from rmi.models.layers import conv1x1

if TYPE_CHECKING:
    import torchvision

BACKBONES = ("resnet101", "deeplab101", "tiny")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_WIDTHS = (32, 64, 128)
RESNET_CHANNELS = 2048  # res5
RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class Trunk(nn.Module):
    """ImageNet normalisation + conv body: ``(U, 3, S, S) uint8 -> (U, C, S/8, S/8)`` float.

    ``frozen``: parameters get ``requires_grad=False``, the body runs under ``no_grad`` and stays
    in eval mode (BatchNorm statistics never change) whatever ``train(mode)`` asks.
    """

    def __init__(self, body: nn.Module, out_channels: int, frozen: bool):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.frozen = frozen
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(not frozen)
        self.train(True)

    def train(self, mode: bool = True) -> Trunk:
        """Like ``nn.Module.train``, but a frozen trunk always stays in eval mode."""
        return super().train(mode and not self.frozen)

    def forward(self, images: Tensor) -> Tensor:
        """``(U, 3, S, S) uint8 -> (U, C, S/8, S/8)`` float features."""
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (U, 3, S, S), got {images.dtype}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.body((images.float() / 255 - self.mean) / self.std)


def build_backbone(name: str, visual_dim: int, cfg: dict, weights_path: str | None = None) -> tuple[Trunk, nn.Conv2d]:
    """``(trunk, visual projection)`` for backbone ``name`` with config ``cfg`` (``backbones.<name>``).

    The projection is a 1x1 conv ``(U, C, h, w) -> (U, visual_dim, h, w)``. ``weights_path``
    (else ``cfg["weights_path"]``) names a local torchvision state_dict of the full
    ResNet-101 / DeepLabV3-ResNet101; it wins over ``cfg["pretrained"]``.
    """
    path = weights_path or cfg.get("weights_path") or None
    frozen = bool(cfg.get("freeze_trunk", True))
    if name == "tiny":
        widths = tuple(int(w) for w in cfg.get("widths", TINY_WIDTHS))
        if len(widths) != 3 or min(widths) < 1:
            raise InputError(f"backbones.{name}.widths", f"needs 3 positive channel counts, got {list(widths)}")
        body = tiny_body(widths)
        if cfg.get("pretrained") and not path:
            raise InputError(
                f"backbones.{name}",
                "has no downloadable weights: give weights_path (rule pretrain_backbone writes them in the pipeline)",
            )
        _load_weights(body, name, path, {}, prefix="")
        return Trunk(body, widths[-1], frozen), conv1x1(widths[-1], visual_dim)
    if name == "resnet101":
        if visual_dim != 1000:
            raise InputError(
                "model.visual_dim",
                f"must be 1000 for backbone resnet101 (its ImageNet fc1000 is the visual feature), got {visual_dim}",
            )
        net = dilated_resnet101()
        _load_weights(net, name, path, cfg, prefix="")
        fc = nn.Conv2d(RESNET_CHANNELS, 1000, kernel_size=1)
        with torch.no_grad():
            fc.weight.copy_(net.fc.weight[:, :, None, None])
            fc.bias.copy_(net.fc.bias)
        return Trunk(resnet_trunk(net), RESNET_CHANNELS, frozen), fc
    if name == "deeplab101":
        body = resnet_trunk(dilated_resnet101())
        _load_weights(body, name, path, cfg, prefix="backbone.")
        return Trunk(body, RESNET_CHANNELS, frozen), conv1x1(RESNET_CHANNELS, visual_dim)
    raise InputError(f"backbones.{name}", f"unknown backbone (expected one of {', '.join(BACKBONES)})")


def _torchvision():
    # imported when a ResNet is built, not with this module: importing torchvision costs a second
    # (its ops import torch._dynamo), which every job of the demo's tiny trunk would pay
    import torchvision

    return torchvision


def dilated_resnet101() -> torchvision.models.ResNet:
    """Randomly initialised torchvision ResNet-101 with output stride 8 (conv4/5 dilated 2/4)."""
    return _torchvision().models.resnet101(weights=None, replace_stride_with_dilation=[False, True, True])


def resnet_trunk(net: torchvision.models.ResNet) -> nn.Sequential:
    """conv1 .. layer4 of ``net`` as a Sequential whose state_dict keys are ResNet's (minus fc)."""
    return nn.Sequential(OrderedDict((k, getattr(net, k)) for k in RESNET_TRUNK))


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TinyBody(nn.Module):
    """The demo's trunk, ``(U, 3, S, S) -> (U, widths[-1], S/8, S/8)``: output stride 8 like the dilated
    ResNet-101, with a small encoder-decoder standing in for its depth.

    ``local``: per width a stride-2 and a stride-1 3x3 conv-BN-ReLU (S/8). ``context``: two more
    stride-2 stages at ``widths[-1]`` channels (S/16, then S/32 with a dilated conv), whose output is
    upsampled back to S/8, concatenated with the local features and fused by a 3x3 conv-BN-ReLU. Every
    cell then sees the whole object it lies in, not only its edges nearby: a ResNet-101's receptive
    field does that through depth; the seven-layer dilated stack this replaces told square from
    diamond from triangle on 70% of the object cells of the generated val images, this trunk on 83%
    (same pretraining, S = 96).
    """

    def __init__(self, widths: tuple[int, int, int] = TINY_WIDTHS):
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers += _conv_bn_relu(cin, width, stride=2) + _conv_bn_relu(width, width)
            cin = width
        self.local = nn.Sequential(*layers)
        c = widths[-1]
        self.context = nn.Sequential(
            *_conv_bn_relu(c, c, stride=2),
            *_conv_bn_relu(c, c),
            *_conv_bn_relu(c, c, stride=2),
            *_conv_bn_relu(c, c, 1, 2),
        )
        self.fuse = nn.Sequential(*_conv_bn_relu(2 * c, c))

    def forward(self, x: Tensor) -> Tensor:
        """``(U, 3, S, S)`` normalised float -> ``(U, widths[-1], S/8, S/8)``."""
        local = self.local(x)
        context = F.interpolate(self.context(local), size=local.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([local, context], 1))


def tiny_body(widths: tuple[int, int, int] = TINY_WIDTHS) -> TinyBody:
    """The demo's ``tiny`` trunk body with stage ``widths`` (``TinyBody``), randomly initialised."""
    return TinyBody(widths)


def torchvision_weights(name: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights of a pretrained backbone: ResNet-101 ``IMAGENET1K_V1`` (R) or
    DeepLabV3-ResNet101 ``COCO_WITH_VOC_LABELS_V1`` (D)."""
    models = _torchvision().models
    return {
        "resnet101": models.ResNet101_Weights.IMAGENET1K_V1,
        "deeplab101": models.segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
    }[name]


def pretrained_state_dict(name: str) -> dict[str, Tensor]:
    """The torchvision state_dict of ``resnet101`` / ``deeplab101`` through the weights API.

    Downloads into torch's hub cache (or reads it from there); raises ``InputError`` with one
    line saying how to provide the file when that fails (no network).
    """
    weights = torchvision_weights(name)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # URLError, HTTPError, OSError, RuntimeError (hash), ...
        raise InputError(
            f"backbones.{name}",
            f"cannot get pretrained weights {weights} ({type(err).__name__}: {err}); set"
            f" backbones.{name}.weights_path to a local torchvision state_dict file or run"
            f" `snakemake data/weights/{name}.pth` (rule fetch_weights) where there is network",
        ) from err


def _load_weights(module: nn.Module, name: str, path: str | None, cfg: dict, prefix: str) -> None:
    """Fill ``module`` from the file ``path``, else the weights API if pretrained, else keep random.

    The source state_dict must hold every key of ``module`` under ``prefix`` with the same shape
    (extra keys, e.g. DeepLab's heads, are ignored); otherwise ``InputError`` naming the source.
    """
    if path:
        where = Path(path)
        try:
            state = torch.load(where, map_location="cpu", weights_only=True)
        except Exception as err:  # missing, truncated or not a torch file
            raise InputError(where, f"cannot read weights ({type(err).__name__}: {err})") from err
    elif cfg.get("pretrained"):
        where, state = f"backbones.{name} (torchvision weights)", pretrained_state_dict(name)
    else:
        return
    if not isinstance(state, dict):
        raise InputError(where, f"is not a state_dict (got {type(state).__name__})")
    own = module.state_dict()
    missing = [prefix + k for k in own if prefix + k not in state]
    if missing:
        raise InputError(
            where, f"not a {name} trunk state_dict: {len(missing)} keys missing, e.g. {', '.join(missing[:3])}"
        )
    wrong = [prefix + k for k, v in own.items() if tuple(state[prefix + k].shape) != tuple(v.shape)]
    if wrong:
        raise InputError(where, f"not a {name} trunk state_dict: wrong shapes for {', '.join(wrong[:3])}")
    module.load_state_dict({k: state[prefix + k] for k in own})
