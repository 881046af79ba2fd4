"""``rmi predict``: one image + one expression -> mask PNG; same result as the pipeline; clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders import build_shapes_caches, train_tiny
from rmi.data.cache import CacheReader
from rmi.data.transforms import resize_and_crop, resize_and_pad_image, upsample_logits
from rmi.inference import predict_image, predict_split
from rmi.model_file import load_model
from rmi.prediction_file import PredictionReader
from rmi.text import Vocab

RMI = Path(sys.executable).with_name("rmi")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    caches = build_shapes_caches(root, {"train": 12, "val": 6}, image_size=64)
    model = train_tiny(root, caches, "rmi")
    return {"model": model, **caches}


def rmi_predict(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(RMI), "predict", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_matches_pipeline_prediction(trained, tmp_path):
    """The CLI on an original JPEG gives the mask the predict rule + reader give for that expression."""
    cache = CacheReader(trained["val"])
    predict_split(trained["model"], trained["val"], tmp_path / "val.h5", batch_size=4)
    reader = PredictionReader(tmp_path / "val.h5")
    for row in (0, len(cache) - 1):
        image_file = cache.image_file(int(cache.image_index[row]))
        out, over = tmp_path / f"mask{row}.png", tmp_path / f"over{row}.png"
        proc = rmi_predict(
            "--checkpoint",
            trained["model"],
            "--image",
            image_file,
            "--expression",
            cache.sentence(row),
            "--out",
            out,
            "--overlay",
            over,
        )
        assert proc.returncode == 0, proc.stderr
        assert "0 of" in proc.stdout and "words unknown" in proc.stdout
        mask = np.asarray(Image.open(out))
        h, w = cache.original_size(row)
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, reader.original_mask(row))
        assert np.asarray(Image.open(over)).shape == (h, w, 3)


def test_any_image_size_grey_and_unknown_words(trained, tmp_path):
    rng = np.random.default_rng(0)
    image = tmp_path / "grey.png"
    Image.fromarray(rng.integers(0, 255, (37, 151), dtype=np.uint8)).save(image)
    out = tmp_path / "m.png"
    proc = rmi_predict(
        "--checkpoint",
        trained["model"],
        "--image",
        image,
        "--expression",
        "the zorblax circle qwfp",
        "--out",
        out,
        "--crf",
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 of 4 words unknown" in proc.stdout and "zorblax" in proc.stdout
    assert np.asarray(Image.open(out)).shape == (37, 151)


def test_predict_image_probability_and_mask(trained):
    model, info = load_model(trained["model"], torch.device("cpu"))
    image = np.full((50, 80, 3), 128, np.uint8)
    pred = predict_image(model, info, image, "red circle on the left")
    assert pred.probability.shape == (50, 80) and pred.mask.dtype == bool
    # the mask is the official one: upsampled logits >= 1e-9 at S x S, then resize_and_crop
    tokens = torch.from_numpy(info.vocab.encode("red circle on the left", info.max_tokens))[None]
    padded = torch.from_numpy(resize_and_pad_image(image, info.image_size).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        logits = model(tokens, torch.zeros(1, dtype=torch.int64), images=padded)
    up = upsample_logits(logits[0, 0].numpy(), info.image_size)
    np.testing.assert_array_equal(pred.mask, resize_and_crop(up >= np.float32(1e-9), 50, 80))
    assert pred.tokens == ["red", "circle", "on", "the", "left"]


def test_errors_are_one_line(trained, tmp_path):
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"\xff\xd8\xff not really a jpeg")
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"garbage")
    other_vocab = tmp_path / "vocab.txt"
    Vocab(["<pad>", "<go>", "<eos>", "<unk>", "zebra"]).save(other_vocab)
    out = tmp_path / "never.png"
    cases = [
        (("--checkpoint", tmp_path / "missing.pt", "--image", image, "--expression", "star"), "missing.pt", "missing"),
        (
            ("--checkpoint", bad_ckpt, "--image", image, "--expression", "star"),
            "bad.pt",
            "cannot read model checkpoint",
        ),
        (("--checkpoint", trained["model"], "--image", bad_image, "--expression", "star"), "bad.jpg", "corrupt"),
        (
            ("--checkpoint", trained["model"], "--image", tmp_path / "nope.jpg", "--expression", "star"),
            "nope.jpg",
            "missing",
        ),
        (
            ("--checkpoint", trained["model"], "--image", image, "--expression", "  . "),
            "--expression",
            "empty expression",
        ),
        (
            ("--checkpoint", trained["model"], "--image", image, "--expression", "star", "--vocab", other_vocab),
            "vocab.txt",
            "vocabulary mismatch",
        ),
    ]
    for args, where, problem in cases:
        proc = rmi_predict(*args, "--out", out)
        assert proc.returncode == 1, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0] and problem in lines[0], (
            proc.stderr
        )
        assert not out.exists()


def test_module_entry_point_and_usage(trained, tmp_path):
    out = tmp_path / "m.png"
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rmi.cli.predict",
            "--checkpoint",
            str(trained["model"]),
            "--image",
            str(image),
            "--expression",
            "star",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    unknown = subprocess.run([str(RMI), "frobnicate"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr
