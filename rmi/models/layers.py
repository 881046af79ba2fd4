"""Building blocks shared by the fusion models: L2 normalisation, 1x1 convs, the LSTM cell.

The LSTM cell is TensorFlow's ``BasicLSTMCell`` (what the official code uses for both the
word LSTM and the mLSTM): one pre-activation ``W [x; h] + b`` split into gates in the order
``i, j, f, o``, with ``forget_bias = 1`` added inside the cell (the bias variable starts at 0)::

    c' = c * sigmoid(f + 1) + sigmoid(i) * tanh(j)        h' = tanh(c') * sigmoid(o)

States are laid out ``(B, P, n)``: ``P = 1`` for the word LSTM, ``P = h*w`` pixels for the mLSTM,
so one scan serves both (the mLSTM is an LSTM cell shared over pixels, i.e. a 1x1 conv-LSTM), and the
recurrent product of all samples and pixels is one matrix product ``(B*P, n) @ (n, 4n)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
from torch import Tensor

FORGET_BIAS = 1.0


def l2_normalize(x: Tensor, dim: int) -> Tensor:
    """TF ``tf.nn.l2_normalize``: ``x / sqrt(max(sum(x**2, dim), 1e-12))``, any shape."""
    return x * torch.rsqrt(x.square().sum(dim, keepdim=True).clamp_min(1e-12))


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """1x1 conv ``(B, in, H, W) -> (B, out, H, W)``, Xavier-uniform weight and zero bias (official init)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def lstm_parameters(input_dim: int, hidden_dim: int) -> tuple[nn.Parameter, nn.Parameter]:
    """``BasicLSTMCell`` variables: weight ``(4n, input_dim + n)`` Glorot-uniform, bias ``(4n,)`` zero.

    Weight columns are ``[input; h]`` and rows the gates ``i, j, f, o`` (TF layout, transposed).
    """
    weight = nn.Parameter(torch.empty(4 * hidden_dim, input_dim + hidden_dim))
    nn.init.xavier_uniform_(weight)
    return weight, nn.Parameter(torch.zeros(4 * hidden_dim))


def _steps_with_padding(valid: Tensor) -> list[bool]:
    """Per step, whether some sample is still on a ``<pad>`` token (its state must be held).

    Read on the host once per scan; every step is masked where the host cannot read ``valid``:
    inside a CUDA graph capture, on the meta device (no data: FLOP counting) and under ``vmap``
    (lockstep training, ``rmi.models.lockstep``: there, trainings of different expression lengths
    leave few steps without padding anyway).
    """
    if (
        valid.is_meta
        or torch._C._functorch.is_batchedtensor(valid)  # no public test of a vmap-batched tensor
        or (valid.is_cuda and torch.cuda.is_current_stream_capturing())
    ):
        return [True] * valid.shape[1]
    return (~valid).any(0).tolist()


def lstm_scan(input_gates: Callable[[int], Tensor], w_h: Tensor, valid: Tensor) -> Iterator[Tensor]:
    """Run the cell over steps ``0..T-1`` from a zero state; yield ``h`` after each step.

    ``input_gates(t)``: ``(B, P, 4n)`` (or broadcastable to it) non-recurrent pre-activation of
    step ``t``, bias included. ``w_h``: ``(4n, n)`` recurrent weight. ``valid``: ``(B, T)`` bool;
    where false (a ``<pad>`` token) the sample's state is left unchanged. Yields ``(B, P, n)``
    hidden states in float32 or wider (the cell state is kept in that precision under autocast).
    """
    w_h_t = w_h.t().contiguous()  # a column slice of the cell weight: copy once, not at every matmul
    padded = _steps_with_padding(valid)
    h = c = None
    for t in range(valid.shape[1]):
        x = input_gates(t)
        if h is None:  # zero state: the recurrent term vanishes
            dtype = torch.promote_types(x.dtype, torch.float32)
            shape = (valid.shape[0], x.shape[1], w_h.shape[1])
            h = c = torch.zeros(shape, dtype=dtype, device=x.device)
            gates = x
        else:  # x + h @ w_h^T as one fused matrix product over all samples and pixels
            gates = torch.addmm(x.expand(*h.shape[:2], -1).reshape(-1, x.shape[-1]), h.flatten(0, 1), w_h_t)
            gates = gates.view(*h.shape[:2], -1)
        i, j, f, o = gates.chunk(4, dim=-1)
        c_new = c * torch.sigmoid(f + FORGET_BIAS) + torch.sigmoid(i) * torch.tanh(j)
        h_new = torch.tanh(c_new) * torch.sigmoid(o)
        if padded[t]:
            keep = valid[:, t, None, None]
            h_new, c_new = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        h, c = h_new, c_new
        yield h


def image_term(w_visual: Tensor, w_spatial: Tensor, bias: Tensor, visual: Tensor, spatial: Tensor) -> Tensor:
    """The per-image constant part of a 1x1 conv over a concat holding visual and spatial maps.

    ``w_visual (O, Dv)``, ``w_spatial (O, 8)``, ``bias (O,)``, ``visual (U, Dv, H, W)``,
    ``spatial (8, H, W)`` -> ``(U, O, H*W)`` = ``W_v v + W_s s + b`` per pixel. Adding the
    per-sample language term (a vector broadcast over pixels) gives the full conv.
    """
    v = visual.flatten(2)
    s = spatial.flatten(1).to(v.dtype)
    return torch.matmul(w_visual, v) + (torch.matmul(w_spatial, s) + bias[:, None]).unsqueeze(0)
