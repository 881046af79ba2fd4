"""Dense pretraining of the demo's tiny trunk: training images only, loss falls, weights load as R/D do."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from builders import shapes_params
from rmi.data.refer import coco_file_name
from rmi.data.shapes import generate
from rmi.errors import InputError
from rmi.models.backbones import build_backbone
from rmi.pretrain import load_dense_set, pretrain_trunk

WIDTHS = (8, 8, 16)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre") / "shapes"
    generate(shapes_params({"train": 24, "val": 6, "testA": 4, "testB": 4}), root)
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    splits = {
        split: {r["image_id"] for r in refs if r["split"] == split} for split in ("train", "val", "testA", "testB")
    }
    return root, splits


def source(root, split="train"):
    return {"refer_dir": str(root), "split_by": "unc", "image_dir": str(root / "images"), "split": split}


def test_reads_training_images_only(generated, tmp_path):
    """Every val/test image is made unreadable: pretraining still works, so it never opened one."""
    root, splits = generated
    work = tmp_path / "copy"
    work.mkdir()
    (work / "images").mkdir()
    for name in ("refs(unc).p", "instances.json"):
        (work / name).write_bytes((root / name).read_bytes())
    for image_id in set().union(*splits.values()):
        data = (root / "images" / coco_file_name(image_id)).read_bytes()
        (work / "images" / coco_file_name(image_id)).write_bytes(data if image_id in splits["train"] else b"")
    data = load_dense_set([source(work)], 32)
    assert len(data.images) == len(splits["train"])
    assert data.n_categories == 8 and len(data.colours) == 8
    labelled = data.category[(data.category > 0) & (data.category < 255)]
    assert len(np.unique(labelled)) == 7  # every shape category occurs
    with pytest.raises(InputError, match="corrupt or truncated image"):  # a val image would have failed
        load_dense_set([source(work, "val")], 32)


def test_pretraining_learns_and_loads_as_trunk_weights(generated, tmp_path):
    root, _ = generated
    torch.set_num_threads(2)
    out = tmp_path / "tiny.pth"
    summary = pretrain_trunk([source(root)], out, WIDTHS, image_size=48, steps=120, batch_size=8, lr=3e-3, threads=2)
    assert summary["loss_end"] < 0.6 * summary["loss_start"], summary
    state = torch.load(out, weights_only=True)
    cfg = {"pretrained": True, "freeze_trunk": True, "weights_path": None, "widths": list(WIDTHS)}
    trunk, _ = build_backbone("tiny", 16, cfg, str(out))
    assert all(torch.equal(trunk.body.state_dict()[k], v) for k, v in state.items())
    assert trunk.frozen and not any(p.requires_grad for p in trunk.parameters())
    with pytest.raises(InputError, match="wrong shapes"):
        build_backbone("tiny", 16, {**cfg, "widths": [8, 8, 32]}, str(out))
    with pytest.raises(InputError, match="give weights_path"):
        build_backbone("tiny", 16, cfg)
