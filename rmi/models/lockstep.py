"""K trainings of one backbone as one network (``rmi.lockstep``): the trunk runs once for all of them,
the heads of one fusion type run together as a stack under ``torch.vmap``.

The members are ``ReferringSegmenter``s with the same frozen trunk (one backbone, one weights file);
their inputs are stacked, a leading ``K`` in front of every tensor of a batch (``rmi.data.lockstep``).

* Trunk: it runs on the ``K x U`` images as one batch. Frozen, it is in eval mode, so the features
  of an image do not depend on the other images of the batch.
* Heads: the members of one fusion form a stack (they come in a row: ordered by fusion). A stack is a template
  ``ReferringSegmenter`` (no trunk) whose trainable parameters are the members' stacked into
  ``(K_s, ...)`` tensors; ``torch.func.functional_call`` of the template runs under ``torch.vmap``
  over the member dimension, so each member computes with its own weights, and the gradient of a
  member's loss reaches only its own slice. Embedding tables of different vocabulary sizes are
  padded with zero rows to the stack's largest: no member indexes its padding rows, so they get
  zero gradients, and Adam without weight decay (the embedding is in the ``other`` group) never
  moves them.
"""

from __future__ import annotations

import copy
import itertools
from functools import partial

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call

from rmi.models.segmenter import ReferringSegmenter, first_word_column

EMBEDDING = "fusion.language.embedding.weight"  # the one parameter whose shape differs between members


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _head(stack: ReferringSegmenter, params: dict[str, Tensor], tokens, image_of, features) -> Tensor:
    """One member's head: ``stack`` computing with ``params``, the member's slice of its parameters."""
    return functional_call(stack, params, (tokens, image_of), {"trunk_features": features, "trim_pads": False})


def _stack(members: list[ReferringSegmenter]) -> ReferringSegmenter:
    """The template of a stack: the first member's head (projection + fusion, an identity trunk) with
    every parameter replaced by the members' parameters stacked (embeddings padded with zero rows)."""
    first = members[0]
    template = ReferringSegmenter(nn.Identity(), copy.deepcopy(first.visual_proj), copy.deepcopy(first.fusion))
    params = [dict(m.named_parameters()) for m in members]
    rows = max(p[EMBEDDING].shape[0] for p in params)
    for name, own in list(template.named_parameters()):
        parts = [p[name].detach() for p in params]
        if name == EMBEDDING:
            parts = [nn.functional.pad(w, (0, 0, 0, rows - w.shape[0])) for w in parts]
        elif any(w.shape != own.shape for w in parts):
            raise ValueError(f"lockstep members differ in the shape of {name}")
        module, _, attr = name.rpartition(".")
        setattr(template.get_submodule(module), attr, nn.Parameter(torch.stack(parts), own.requires_grad))
    template.fusion.language.embedding.num_embeddings = rows
    return template


class LockstepSegmenter(nn.Module):
    """``members`` (frozen, equal trunks; ordered by fusion) trained as one module: the shared ``trunk``
    and one stack per fusion.

    The members' trunks are replaced by the shared one; their heads keep their initial weights
    until ``member(k)`` copies the trained ones back.
    """

    def __init__(self, members: list[ReferringSegmenter]):
        super().__init__()
        self.trunk = members[0].trunk
        for m in members:
            if not m.frozen_trunk or not _same_weights(m.trunk, self.trunk):
                raise ValueError("lockstep members need one frozen trunk (the same weights)")
            m.trunk = self.trunk
        self._members = members  # a plain list: not submodules (their heads are in the stacks)
        self.bounds = []  # (first, last + 1) member of each stack
        self.stacks = nn.ModuleList()
        for fusion, run in itertools.groupby(members, key=lambda m: type(m.fusion)):
            if any(type(s.fusion) is fusion for s in self.stacks):
                raise ValueError("order lockstep members by fusion: one stack per fusion runs them together")
            start = self.bounds[-1][1] if self.bounds else 0
            self.bounds.append((start, start + len(list(run))))
            self.stacks.append(_stack(members[slice(*self.bounds[-1])]))

    def forward(
        self,
        tokens: Tensor,
        image_of: Tensor,
        images: Tensor | None = None,
        trunk_features: Tensor | None = None,
        trim_pads: bool = True,
    ) -> Tensor:
        """``ReferringSegmenter.forward`` of every member on its slice: ``tokens (K, B, T)``, ``image_of (K, B)``,
        ``images (K, U, 3, S, S) uint8`` or ``trunk_features (K, U, C, S/8, S/8)`` -> logits ``(K, B, 1, S/8, S/8)``.

        Tokens are cut at the first column holding a word of some member (``trim_pads``); the
        members' shorter expressions start with ``<pad>`` steps, which leave their states at zero.
        """
        if (images is None) == (trunk_features is None):
            raise ValueError("give exactly one of images or trunk_features")
        if trim_pads:
            tokens = tokens[..., first_word_column(tokens) :]
        if trunk_features is None:
            trunk_features = self.trunk(images.flatten(0, 1)).unflatten(0, images.shape[:2])
        logits = []
        for stack, (a, b) in zip(self.stacks, self.bounds, strict=True):
            heads = torch.vmap(partial(_head, stack))
            logits.append(heads(dict(stack.named_parameters()), tokens[a:b], image_of[a:b], trunk_features[a:b]))
        return torch.cat(logits)

    def param_groups(self, lr: float, weight_decay: float, bias_lr_mult: float) -> list[dict]:
        """``ReferringSegmenter.param_groups`` over the stacked parameters: the same groups and settings
        as each member's alone, so one Adam steps every member as its own Adam would."""
        groups = {}
        for stack in self.stacks:
            for group in stack.param_groups(lr, weight_decay, bias_lr_mult):
                groups.setdefault(group["name"], {**group, "params": []})["params"] += group["params"]
        return list(groups.values())

    @torch.no_grad()
    def member(self, k: int) -> ReferringSegmenter:
        """Member ``k`` holding its trained weights (copied out of its stack, embedding unpadded)."""
        s = next(i for i, (a, b) in enumerate(self.bounds) if a <= k < b)
        own = dict(self._members[k].named_parameters())
        for name, stacked in self.stacks[s].named_parameters():
            own[name].copy_(stacked[k - self.bounds[s][0], : own[name].shape[0]])
        return self._members[k]
