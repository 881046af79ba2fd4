"""The data-stage CLIs (workflow_scripts/*.py) and the shared ``run_cli`` wrapper."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_refer import annotations, write_refer_dataset
from test_referit import crop_mask, write_referit_dataset

from rmi.data.cache import CacheReader
from rmi.errors import ChecksumError
from rmi.text import SPECIALS, Vocab

REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    """Import ``workflow_scripts/<name>.py`` as a module (its ``main`` runs in-process)."""
    spec = importlib.util.spec_from_file_location(f"workflow_scripts_{name}", REPO / "workflow_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vocab_and_cache(source: dict, split: str, out: Path, dataset: str) -> CacheReader:
    src = json.dumps(source)
    script("build_vocab").main(["--source", src, "--split", split, "--min-count", "1", "--out", str(out / "vocab.txt")])
    script("build_cache").main(
        [
            "--source",
            src,
            "--split",
            split,
            "--vocab",
            str(out / "vocab.txt"),
            "--image-size",
            "32",
            "--max-tokens",
            "5",
            "--dataset",
            dataset,
            "--role",
            "train" if split == "train" else "eval",
            "--out",
            str(out / f"{split}.h5"),
        ]
    )
    return CacheReader(out / f"{split}.h5")


def test_vocab_and_cache_for_refer_layout(tmp_path):
    source = write_refer_dataset(tmp_path / "raw")
    reader = vocab_and_cache(source, "train", tmp_path / "cache", "unc")
    vocab = Vocab.load(tmp_path / "cache" / "vocab.txt")
    # train sentences: "the red box", "left thing", "tall one" -> every word once, alphabetical
    assert vocab.words == [*SPECIALS, "box", "left", "one", "red", "tall", "the", "thing"]
    assert list(reader.sent_id) == [1001, 1002, 1021]
    assert reader.attrs["dataset"] == "unc" and reader.attrs["max_tokens"] == 5
    assert vocab.decode(reader.tokens[0]) == ["the", "red", "box"]
    np.testing.assert_array_equal(reader.original_mask(0), annotations()[11][2])


def test_vocab_and_cache_for_referit_layout(tmp_path):
    source = write_referit_dataset(tmp_path / "raw")
    reader = vocab_and_cache(source, "test", tmp_path / "cache", "referit")
    assert list(reader.sent_id) == [700100, 700200, 700201, 1200100]
    np.testing.assert_array_equal(reader.original_mask(1), crop_mask("7_2"))


def test_input_error_exits_1_with_one_line(tmp_path):
    source = {"format": "refer", "refer_dir": str(tmp_path / "nowhere"), "split_by": "unc", "image_dir": str(tmp_path)}
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts" / "build_vocab.py"),
            "--source",
            json.dumps(source),
            "--split",
            "train",
            "--min-count",
            "1",
            "--out",
            str(tmp_path / "vocab.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere' / 'refs(unc).p'}: file is missing"
    assert "Traceback" not in run.stderr and not (tmp_path / "vocab.txt").exists()


def test_download_cli(http_server, tmp_path):
    root, base = http_server
    (root / "a.json").write_text("{}")
    spec = {"files": [{"url": f"{base}/a.json", "sha256": hashlib.sha256(b"{}").hexdigest(), "unpack": False}]}
    script("download").main(["--spec", json.dumps(spec), "--out", str(tmp_path / "data" / "splits")])
    assert (tmp_path / "data" / "splits" / "a.json").read_text() == "{}"


def test_fetch_weights_checks_the_prefix_in_the_name(http_server, tmp_path):
    root, base = http_server
    weights = b"not really a state dict"
    prefix = hashlib.sha256(weights).hexdigest()[:8]
    (root / f"resnet101-{prefix}.pth").write_bytes(weights)
    (root / "resnet101-00000000.pth").write_bytes(weights)
    fetch = script("fetch_weights")
    fetch.main(
        ["--backbone", "resnet101", "--url", f"{base}/resnet101-{prefix}.pth", "--out", str(tmp_path / "w" / "r.pth")]
    )
    assert (tmp_path / "w" / "r.pth").read_bytes() == weights
    with pytest.raises(ChecksumError, match=f"sha256 prefix mismatch: expected 00000000, got {prefix}"):
        fetch.main(
            [
                "--backbone",
                "resnet101",
                "--url",
                f"{base}/resnet101-00000000.pth",
                "--out",
                str(tmp_path / "w" / "bad.pth"),
            ]
        )
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["r.pth"]


def test_fetch_weights_defaults_to_torchvision_urls():
    from rmi.models.backbones import torchvision_weights

    assert torchvision_weights("resnet101").url == "https://download.pytorch.org/models/resnet101-63fe2227.pth"
    assert (
        torchvision_weights("deeplab101").url
        == "https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth"
    )
