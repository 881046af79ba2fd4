"""Small synthetic datasets for tests: real JPEG files + rectangle masks as COCO polygons."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rmi.data.masks import CocoSegments
from rmi.data.records import Expression
from rmi.errors import InputError

#: (height, width) of the test images: landscape, portrait, square, tiny, grey
SIZES = [(60, 90), (80, 40), (64, 64), (17, 23), (50, 70)]
SENTENCES = [
    "red box on the left",
    "the blue one",
    "big square",
    "left thing .",
    "small dark box at the bottom right corner",
]


def rect_polygon(y0: int, x0: int, y1: int, x1: int) -> list[float]:
    """COCO polygon of the pixel rectangle rows y0..y1-1, cols x0..x1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_records(root: Path, split: str = "train", seed: int = 0, sizes=SIZES, sentences=SENTENCES) -> list[Expression]:
    """One image per size with one rectangle object and two expressions each.

    Image ``k`` is grey (single-channel JPEG) when ``k == 4``. The object mask is the rectangle
    (what pycocotools decodes from its polygon); returns the records in a fixed order.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for k, (h, w) in enumerate(sizes):
        img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        y0, x0 = h // 4, w // 5
        y1, x1 = y0 + max(2, h // 2), x0 + max(2, w // 2)
        img[y0:y1, x0:x1] = (230, 30, 30)
        path = root / f"COCO_train2014_{k + 1:012d}.jpg"
        pil = Image.fromarray(img)
        (pil.convert("L") if k == 4 else pil).save(path, quality=95)
        mask = CocoSegments([[rect_polygon(y0, x0, y1, x1)]], h, w, where=f"test ann {k}", key=f"ann{k}")
        for j in range(2):
            records.append(
                Expression(
                    sent_id=100 * (k + 1) + j,
                    ref_id=k + 1,
                    image_id=k + 1,
                    image_path=path,
                    sentence=sentences[(k + j) % len(sentences)],
                    mask=mask,
                    split=split,
                )
            )
    return records


def shapes_params(images: dict, seed: int = 5, location_words: bool = True) -> dict:
    """Generator parameters of a small ``shapes`` dataset (the config's ``generator:`` block)."""
    return {
        "seed": seed,
        "location_words": location_words,
        "images": images,
        "min_side": 64,
        "max_side": 128,
        "grayscale_fraction": 0.1,
    }


def build_shapes_caches(
    root: Path, images: dict, image_size: int, max_tokens: int = 20, **generator
) -> dict[str, Path]:
    """Generate a small ``shapes`` dataset under ``root`` and cache every split.

    ``generator``: overrides of ``shapes_params`` (e.g. ``objects``, ``object_scale``).
    Returns ``{"vocab": vocab.txt, <split>: <split>.h5, ...}``; the vocabulary is the train split's.
    """
    from rmi.data.cache import build_cache
    from rmi.data.refer import load_refer
    from rmi.data.shapes import generate
    from rmi.text import Vocab

    data = root / "data"
    generate({**shapes_params(images), **generator}, data)
    out = {"vocab": root / "cache" / "vocab.txt"}
    records = {split: load_refer(data, "unc", data / "images", split) for split in images}
    vocab = Vocab.build(r.sentence for r in records["train"])
    vocab.save(out["vocab"])
    for split, recs in records.items():
        out[split] = root / "cache" / f"{split}.h5"
        build_cache(
            recs, vocab, out[split], image_size, max_tokens, dataset="shapes", split=split, train=split == "train"
        )
    return out


def tiny_hparams(
    fusion: str, steps: int, *, image_size: int, dim: int = 16, freeze: bool = False, widths=None, **train
) -> dict:
    """The ``hparams`` a ``train`` job gets (as ``rules/common.smk`` builds them) for a small ``tiny`` model
    trained from scratch; ``train`` overrides the training keys (defaults: batch 8, lr 3e-3, grouped by image).
    """
    backbone_cfg = {"pretrained": False, "freeze_trunk": freeze, "weights_path": None}
    if widths is not None:
        backbone_cfg["widths"] = list(widths)
    return {
        "seed": 0,
        "image_size": image_size,
        "backbone": "tiny",
        "fusion": fusion,
        "backbone_cfg": backbone_cfg,
        "model": {k: dim for k in ("visual_dim", "embed_dim", "lstm_dim", "mlstm_dim", "mlp_dim")},
        "train": {
            "steps": steps,
            "batch_size": 8,
            "lr": 3e-3,
            "lr_end": 1e-5,
            "lr_power": 0.9,
            "weight_decay": 5e-4,
            "bias_lr_mult": 1.0,
            "group_by_image": True,
            "length_buckets": False,
            "loss_reduction": "sum",
            "cuda_graphs": True,
            "amp": True,
            **train,
        },
    }


def train_job(caches: dict, out: Path, hp: dict, **kw):
    """A ``TrainJob`` on ``caches["train"]`` writing everything under ``out`` (no progress bar)."""
    from rmi.train import TrainJob

    return TrainJob(
        cache=caches["train"],
        vocab=caches["vocab"],
        hparams=hp,
        out_model=out / "model.pt",
        out_log=out / "train_log.csv",
        checkpoint_dir=out / "ckpt",
        progress=False,
        **kw,
    )


def train_tiny(root: Path, caches: dict, fusion: str, steps: int = 30, image_size: int = 64) -> Path:
    """Train a very small ``tiny`` model for ``steps`` steps on ``caches["train"]``; returns model.pt."""
    from rmi.train import run

    hp = tiny_hparams(fusion, steps, image_size=image_size, widths=(8, 8, 16), group_by_image=False)
    out = root / fusion
    run(train_job(caches, out, hp))
    return out / "model.pt"


def script_env() -> dict[str, str]:
    """The environment of a ``workflow_scripts`` subprocess: this checkout's ``rmi``, one OpenMP thread."""
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}


def wait_for(predicate, proc, timeout: float = 120.0) -> None:
    """Poll ``predicate()`` until true; fail if the subprocess ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def process_group(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group ``pgid`` (Linux ``/proc``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def one_line_error(fn, *args, error=InputError, **kw) -> str:
    """The message of the ``error`` that ``fn(*args, **kw)`` raises; asserts it is one line."""
    with pytest.raises(error) as err:
        fn(*args, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg
