"""What the models do, as figures (paper Fig. 1, 5, 6, 7) and training curves; matplotlib, Agg.

* ``progression``: the prediction "until after reading word t" for every word, one row per
  model (LSTM: the head on h_t; RMI: the head on the mLSTM state after word t).
* ``response_maps``: RMI's mLSTM hidden state after each word, channel mean, bilinearly
  upsampled, over the image; the last column is the DenseCRF output.
* ``qualitative_grid``: image, expression, ground truth and predictions at original resolution.
* ``loss_curve``: loss (raw and moving average) and learning rate against the step.

Images are shown cropped to the content box of the resize-and-pad (the original aspect ratio).
Everything is deterministic for a given model, cache and seed.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from rmi.crf import CRFParams, refine  # noqa: E402
from rmi.data.cache import CacheReader  # noqa: E402
from rmi.data.transforms import unpad_and_resize, upsample_logits  # noqa: E402
from rmi.fileio import atomic_path  # noqa: E402
from rmi.prediction_file import PredictionReader, probability  # noqa: E402
from rmi.text import tokenize  # noqa: E402

BORDER_RGB = np.array([0, 235, 235], np.float64)
PNG_METADATA = {"Software": None}  # no version string: identical bytes across matplotlib builds


def select_expressions(cache: CacheReader, n: int, n_long: int, seed: int) -> list[int]:
    """``n`` expression rows drawn with ``seed`` plus the ``n_long`` longest others (ties: first)."""
    rng = np.random.default_rng(seed)
    rows = sorted(rng.choice(len(cache), size=min(n, len(cache)), replace=False).tolist())
    rest = [r for r in np.argsort(-cache.n_tokens.astype(np.int64), kind="stable") if r not in rows]
    return rows + [int(r) for r in rest[:n_long]]


def _inputs(cache: CacheReader, row: int) -> dict:
    image = cache.image(int(cache.image_index[row]))
    return {
        "tokens": torch.from_numpy(cache.tokens[row : row + 1].astype(np.int64)),
        "image_of": torch.zeros(1, dtype=torch.int64),
        "images": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None],
    }


def words_of(cache: CacheReader, row: int) -> list[str]:
    """The tokens the model read for expression ``row`` (at most T)."""
    return tokenize(cache.sentence(row))[: cache.max_tokens][: int(cache.n_tokens[row])]


@torch.no_grad()
def progression_steps(model, cache: CacheReader, row: int) -> dict[str, np.ndarray]:
    """Per real word t: ``logits (n, S, S)`` upsampled, ``masks (n, S, S) bool`` (logit > 0) and,
    for RMI, ``response (n, S, S)`` (channel mean of the mLSTM state, bilinearly upsampled)."""
    n, size = int(cache.n_tokens[row]), cache.image_size
    steps = model.forward_steps(**_inputs(cache, row))
    logits = upsample_logits(steps["logits"][0, -n:, 0].float().numpy(), size)
    out = {"logits": logits, "masks": logits > 0}
    if "response" in steps:
        out["response"] = upsample_logits(steps["response"][0, -n:].float().numpy(), size)
    return out


def _content(cache: CacheReader, row: int, array: np.ndarray) -> np.ndarray:
    """Crop an ``(S, S, ...)`` array to the content box of expression ``row``'s image."""
    return array[cache.geometry(row).box]


def overlay(image: np.ndarray, mask: np.ndarray, dim: float = 0.3) -> np.ndarray:
    """``image (h, w, 3) uint8`` with ``mask (h, w) bool`` shown -> ``(h, w, 3) uint8``: the mask keeps its
    colours, the rest is dimmed to ``dim`` of its brightness, and the mask's border is drawn in cyan.

    (A tint would vanish on an object of the tint's colour; no generated object is cyan. An empty
    mask leaves the whole image dimmed.)
    """
    out = image.astype(np.float64)
    out[~mask] *= dim
    border = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    out[border] = BORDER_RGB
    return out.astype(np.uint8)


def _save(fig, out_png: str | Path) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80, metadata=PNG_METADATA)
    plt.close(fig)


def _title(cache: CacheReader, row: int) -> str:
    return textwrap.fill(f'"{cache.sentence(row)}" (sent_id {int(cache.sent_id[row])})', 110)


def progression(models: dict, cache: CacheReader, row: int, out_png: str | Path) -> None:
    """Paper Fig. 1/5: ground truth, then the prediction after each word; one row per model."""
    words = words_of(cache, row)
    image = _content(cache, row, cache.image(int(cache.image_index[row])))
    gt = _content(cache, row, cache.padded_mask(row))
    cols = len(words) + 1
    fig, axes = plt.subplots(len(models), cols, figsize=(1.6 * cols, 1.8 * len(models) + 0.6), squeeze=False)
    for r, (label, model) in enumerate(models.items()):
        masks = progression_steps(model, cache, row)["masks"]
        axes[r, 0].imshow(overlay(image, gt))
        axes[r, 0].set_title("ground truth", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=10)
        for t, word in enumerate(words):
            axes[r, t + 1].imshow(overlay(image, _content(cache, row, masks[t])))
            axes[r, t + 1].set_title(f"{t + 1}: {word}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(_title(cache, row), fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)


def response_maps(model, cache: CacheReader, row: int, crf: CRFParams, out_png: str | Path) -> None:
    """Paper Fig. 6: the mLSTM response after each word over the image, then the DenseCRF output."""
    steps = progression_steps(model, cache, row)
    if "response" not in steps:
        raise ValueError("response maps need an RMI model")
    words = words_of(cache, row)
    padded = cache.image(int(cache.image_index[row]))
    image = _content(cache, row, padded)
    prob = probability(steps["logits"][-1])
    final = _content(cache, row, refine(prob, padded, crf))
    cols = len(words) + 1
    fig, axes = plt.subplots(1, cols, figsize=(1.7 * cols + 0.8, 2.4), squeeze=False)
    lo, hi = float(steps["response"].min()), float(steps["response"].max())
    for t, word in enumerate(words):
        ax = axes[0, t]
        ax.imshow(image)
        heat = ax.imshow(_content(cache, row, steps["response"][t]), cmap="jet", alpha=0.5, vmin=lo, vmax=hi)
        ax.set_title(f"{t + 1}: {word}", fontsize=8)
    axes[0, -1].imshow(overlay(image, final))
    axes[0, -1].set_title("RMI + DenseCRF", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(heat, ax=axes[0, :-1].tolist(), fraction=0.02, pad=0.01, label="mean mLSTM response")
    fig.suptitle(_title(cache, row), fontsize=9)
    _save(fig, out_png)


def qualitative_grid(
    cache: CacheReader, rows: Sequence[int], predictions: dict[str, PredictionReader], out_png: str | Path
) -> None:
    """Paper Fig. 7: per expression (row) the image, the ground truth and each prediction, at original size."""
    cols = 2 + len(predictions)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.3 * len(rows) + 0.3), squeeze=False)
    for r, row in enumerate(rows):
        h, w = cache.original_size(row)
        padded = cache.image(int(cache.image_index[row]))
        image = np.stack([unpad_and_resize(padded[..., c], h, w, mode="bilinear") for c in range(3)], -1)
        image = np.clip(image, 0, 255).astype(np.uint8)
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(textwrap.fill(cache.sentence(row), 34), fontsize=7)
        axes[r, 1].imshow(overlay(image, cache.original_mask(row)))
        axes[r, 1].set_title("ground truth", fontsize=8)
        for c, (label, reader) in enumerate(predictions.items()):
            i = int(np.flatnonzero(reader.sent_id == cache.sent_id[row])[0])
            axes[r, 2 + c].imshow(overlay(image, reader.original_mask(i)))
            axes[r, 2 + c].set_title(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _save(fig, out_png)


def loss_curve(train_log: str | Path, out_png: str | Path, title: str = "") -> None:
    """Loss (raw and moving average over ~5% of the rows) and learning rate against the step."""
    log = pd.read_csv(train_log)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(log["step"], log["loss"], color="tab:blue", alpha=0.35, label="loss")
    window = max(1, len(log) // 20)
    ax.plot(
        log["step"],
        log["loss"].rolling(window, min_periods=1).mean(),
        color="tab:blue",
        label=f"loss, moving average ({window} rows)",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("sigmoid cross-entropy")
    lr_ax = ax.twinx()
    lr_ax.plot(log["step"], log["lr"], color="tab:orange", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    ax.set_title(title or str(train_log), fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)
