"""Pretraining trunks in the pipeline (tiny and D: dense labels; R: image-level labels): training images only,
loss falls, the weights load through build_backbone as torchvision's do."""

from __future__ import annotations

import pickle
from functools import partial

import numpy as np
import pytest
import torch

from builders import shapes_params
from rmi.data.refer import coco_file_name
from rmi.data.shapes import generate
from rmi.errors import InputError
from rmi.models.backbones import build_backbone
from rmi.pretrain import IGNORE, load_labelled_set, pretrain_trunk

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


def unreadable_eval_images(root, splits, work):
    """A copy of the generated set whose val/test images are empty files (any read of one fails)."""
    (work / "images").mkdir(parents=True)
    for name in ("refs(unc).p", "instances.json"):
        (work / name).write_bytes((root / name).read_bytes())
    for image_id in set().union(*splits.values()):
        data = (root / "images" / coco_file_name(image_id)).read_bytes()
        (work / "images" / coco_file_name(image_id)).write_bytes(data if image_id in splits["train"] else b"")
    return work


def test_reads_training_images_only(generated, tmp_path):
    """Every val/test image is made unreadable: loading still works, so it never opened one."""
    root, splits = generated
    work = unreadable_eval_images(root, splits, tmp_path / "copy")
    data = load_labelled_set([source(work)], 32)
    assert len(data.images) == len(splits["train"])
    assert data.n_categories == 8 and len(data.colours) == 8
    labelled = data.category[(data.category > 0) & (data.category < 255)]
    assert len(np.unique(labelled)) == 7  # every shape category occurs
    # image-level labels: the categories painted on the image, its colours unknown (-1) on grey images
    for k in range(len(data.images)):
        painted = set(np.unique(data.category[k])) - {0, 255}
        assert {c + 1 for c in np.flatnonzero(data.present[k, :7] == 1)} >= painted
        grey = (data.images[k][..., 0] == data.images[k][..., 1]).all()
        assert (data.present[k, 7:] == -1).all() == grey
    with pytest.raises(InputError, match="corrupt or truncated image"):  # a val image would have failed
        load_labelled_set([source(work, "val")], 32)


def test_extent_is_the_size_class_of_the_object_a_pixel_shows(generated):
    """Each object pixel's extent class is its object's visible share of the ORIGINAL image, binned at
    EXTENT_EDGES, painted in annotation order like the category; background and crowd as there."""
    from rmi.data.refer import split_images
    from rmi.data.transforms import resize_and_pad_mask
    from rmi.pretrain import EXTENT_EDGES

    root, _ = generated
    data = load_labelled_set([source(root)], 48)
    assert np.array_equal(data.extent == 0, data.category == 0)
    assert np.array_equal(data.extent == IGNORE, data.category == IGNORE)
    for k, item in enumerate(split_images(root, "unc", root / "images", "train")):
        expected = np.zeros((48, 48), np.uint8)
        for _, _, mask_source, crowd in item.objects:
            original = mask_source.decode()
            share = np.count_nonzero(original) / original.size
            expected[resize_and_pad_mask(original, 48)] = IGNORE if crowd else 1 + sum(share > e for e in EXTENT_EDGES)
        assert np.array_equal(data.extent[k], expected), item.image_id
    assert len(set(np.unique(data.extent)) - {0, IGNORE}) >= 3  # the classes are put to use


def test_tiny_pretraining_learns_and_loads_as_trunk_weights(generated, tmp_path):
    root, _ = generated
    torch.set_num_threads(2)
    out = tmp_path / "tiny.pth"
    summary = pretrain_trunk(
        "tiny", [source(root)], out, image_size=48, steps=120, batch_size=8, lr=3e-3, widths=WIDTHS, threads=2
    )
    assert summary["task"] == "dense" and summary["loss_end"] < 0.6 * summary["loss_start"], summary
    assert not summary["extent"]
    state = torch.load(out, weights_only=True)
    cfg = {"pretrained": True, "freeze_trunk": True, "weights_path": None, "widths": list(WIDTHS)}
    trunk, _ = build_backbone("tiny", 16, cfg, str(out))
    assert all(torch.equal(trunk.body.state_dict()[k], v) for k, v in state.items())
    assert trunk.frozen and not any(p.requires_grad for p in trunk.parameters())
    with pytest.raises(InputError, match="wrong shapes"):
        build_backbone("tiny", 16, {**cfg, "widths": [8, 8, 32]}, str(out))
    with pytest.raises(InputError, match="give weights_path"):
        build_backbone("tiny", 16, cfg)


def test_precision_auto_takes_native_bf16_and_fp32_never(generated, tmp_path, monkeypatch):
    """With bf16 native (patched: this CPU may lack it), ``auto`` pretrains under bf16 autocast and
    ``fp32`` does not: the two runs log their precision and leave different weights; ``fp32`` gives
    the same weights as ``auto`` where bf16 is not native."""
    root, _ = generated
    run = partial(pretrain_trunk, "tiny", [source(root)], image_size=32, steps=3, batch_size=4, lr=3e-3, widths=WIDTHS)
    monkeypatch.setattr("rmi.pretrain.native_bf16", lambda dev: True)
    assert run(tmp_path / "auto.pth")["precision"] == "bf16"
    assert run(tmp_path / "fp32.pth", precision="fp32")["precision"] == "fp32"
    monkeypatch.setattr("rmi.pretrain.native_bf16", lambda dev: False)
    assert run(tmp_path / "auto_fp32.pth")["precision"] == "fp32"
    auto, fp32, auto_fp32 = (
        torch.load(tmp_path / f"{n}.pth", weights_only=True) for n in ("auto", "fp32", "auto_fp32")
    )
    assert any(not torch.equal(auto[k], fp32[k]) for k in fp32)
    assert all(torch.equal(auto_fp32[k], fp32[k]) for k in fp32)
    with pytest.raises(ValueError, match="precision 'bf16'"):
        run(tmp_path / "x.pth", precision="bf16")


def test_extent_head_learns_and_leaves_the_same_trunk(generated, tmp_path):
    """With ``extent`` the dense task has a third head, the three losses fall together, and the weights
    written are the trunk's alone (they load as the tiny trunk's); ``extent`` needs the dense task."""
    from rmi.pretrain import build_pretrainer

    root, _ = generated
    out = tmp_path / "tiny_extent.pth"
    summary = pretrain_trunk(
        "tiny", [source(root)], out, image_size=48, steps=120, batch_size=8, lr=3e-3, widths=WIDTHS, extent=True
    )
    assert summary["extent"] and summary["loss_end"] < 0.6 * summary["loss_start"], summary
    heads = build_pretrainer("tiny", WIDTHS, 8, 8, extent=True)(torch.zeros(2, 3, 48, 48, dtype=torch.uint8))
    assert [h.shape[1] for h in heads] == [8, 9, 5]
    cfg = {"pretrained": True, "freeze_trunk": True, "weights_path": None, "widths": list(WIDTHS)}
    trunk, _ = build_backbone("tiny", 16, cfg, str(out))
    assert trunk.frozen
    with pytest.raises(InputError, match="needs the dense task"):
        build_pretrainer("tiny", WIDTHS, 8, 8, task="classify", extent=True)


@pytest.mark.parametrize("backbone", ["resnet101", "deeplab101"])
def test_resnet_pretraining_reads_training_images_only_and_loads_as_r_and_d(generated, tmp_path, backbone):
    """R (image-level labels on the pooled trunk) and D (dense labels) from unreadable val/test images:
    the weights load through build_backbone, R's fc as the visual projection."""
    root, splits = generated
    work = unreadable_eval_images(root, splits, tmp_path / "copy")
    torch.set_num_threads(2)
    out = tmp_path / f"{backbone}.pth"
    summary = pretrain_trunk(backbone, [source(work)], out, image_size=32, steps=2, batch_size=2, lr=1e-3, threads=2)
    assert summary["task"] == {"resnet101": "classify", "deeplab101": "dense"}[backbone]
    assert summary["images"] == len(splits["train"]) and np.isfinite(summary["loss_end"])
    state = torch.load(out, weights_only=True)
    cfg = {"pretrained": True, "freeze_trunk": True, "weights_path": None}
    trunk, projection = build_backbone(backbone, 1000, cfg, str(out))
    prefix = "backbone." if backbone == "deeplab101" else ""
    assert all(torch.equal(v, state[prefix + k]) for k, v in trunk.body.state_dict().items())
    if backbone == "resnet101":
        assert torch.equal(projection.weight[:, :, 0, 0], state["fc.weight"])
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 2048, 4, 4)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_classification_pretraining_learns(generated, tmp_path, pooling):
    """The image-level task on a small trunk body, either pooling: the loss falls (``build_pretrainer``
    gives R a ResNet-101; the task is the same on any body)."""
    from rmi.models.backbones import tiny_body
    from rmi.pretrain import Pretrainer, dihedral

    root, _ = generated
    torch.manual_seed(0)
    data = load_labelled_set([source(root)], 48)
    model = Pretrainer(
        tiny_body(WIDTHS),
        WIDTHS[-1],
        "classify",
        data.n_categories,
        len(data.colours),
        fc=torch.nn.Linear(WIDTHS[-1], 1000),
        pooling=pooling,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(200):
        idx = rng.choice(len(data.images), size=8, replace=False)
        (images,) = dihedral([data.images[idx]], int(rng.integers(8)))
        logits = model(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
        loss = model.loss(logits, [torch.from_numpy(data.present[idx])])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # below what the label frequencies alone give (a bias-only classifier)
    known = data.present >= 0
    freq = np.clip(np.where(known, data.present, 0).sum(0) / known.sum(0), 1e-6, 1 - 1e-6)
    prior = -np.mean(np.where(data.present == 1, np.log(freq), np.log(1 - freq))[known])
    assert np.mean(losses[-20:]) < 0.8 * prior, (prior, losses[:5], losses[-5:])


def test_pooling_of_the_label_scores():
    """avg: fc of the mean feature (= the mean of fc over the cells, fc being affine); max: each label's
    highest cell of fc, computed here as a 1x1 convolution."""
    from rmi.pretrain import build_pretrainer

    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    scores = {}
    for pooling in ("avg", "max"):
        torch.manual_seed(1)
        model = build_pretrainer("tiny", WIDTHS, 8, 8, task="classify", pooling=pooling).eval()
        with torch.no_grad():
            (scores[pooling],) = model(images)
            features = model.body((images.float() / 255 - model.mean) / model.std)
        weight = model.fc.weight[:, :, None, None]
        cells = torch.nn.functional.conv2d(features, weight, model.fc.bias)  # (B, labels, h, w)
        assert scores[pooling].shape == (3, 7 + 8)
        expected = cells.mean((2, 3)) if pooling == "avg" else cells.amax((2, 3))
        torch.testing.assert_close(scores[pooling], expected, rtol=1e-5, atol=1e-5)
    assert (scores["max"] >= scores["avg"] - 1e-6).all() and not torch.allclose(scores["max"], scores["avg"])


def test_tiny_trunk_pretrained_as_r_loads_as_its_weights(generated, tmp_path):
    """task/pooling per backbone: the tiny trunk pretrained on image-level labels (max pooling) writes the
    tiny trunk's weights, its fc dropped; unknown tasks and poolings are named."""
    from rmi.pretrain import build_pretrainer

    root, _ = generated
    out = tmp_path / "tiny_r.pth"
    summary = pretrain_trunk(
        "tiny",
        [source(root)],
        out,
        image_size=32,
        steps=3,
        batch_size=4,
        lr=1e-3,
        widths=WIDTHS,
        task="classify",
        pooling="max",
    )
    assert (summary["task"], summary["pooling"]) == ("classify", "max") and np.isfinite(summary["loss_end"])
    cfg = {"pretrained": True, "freeze_trunk": True, "weights_path": None, "widths": list(WIDTHS)}
    trunk, _ = build_backbone("tiny", 16, cfg, str(out))
    state = torch.load(out, weights_only=True)
    assert set(state) == set(trunk.body.state_dict())
    with pytest.raises(InputError, match="pretrain.task"):
        build_pretrainer("tiny", WIDTHS, 8, 8, task="detect")
    with pytest.raises(InputError, match="pretrain.pooling"):
        build_pretrainer("resnet101", None, 8, 8, pooling="lse")


def test_objects_are_the_visible_shapes_of_the_label_maps(generated):
    """``objects`` rows: the box of each visible non-crowd object, its category and colour painted
    inside it, every object of the image counted; grey images leave the colour unknown."""
    root, _ = generated
    data = load_labelled_set([source(root)], 48)
    assert data.objects.shape[1] == 7 and len(data.objects) >= 2 * len(data.images)
    for k, y0, x0, y1, x1, category, colour in data.objects:
        assert 0 <= y0 < y1 <= 48 and 0 <= x0 < x1 <= 48
        box = (slice(y0, y1), slice(x0, x1))
        assert category + 1 in data.category[k][box]
        assert (colour == IGNORE) == bool((data.present[k, 7:] == -1).all())
        if colour != IGNORE:
            assert colour + 1 in data.colour[k][box]
    for k in range(len(data.images)):
        painted = set(np.unique(data.category[k])) - {0, IGNORE}
        assert {c + 1 for c in data.objects[data.objects[:, 0] == k, 5]} == painted


def test_object_crops_centre_the_object_at_two_thirds_of_the_crop():
    """A 12 x 12 white square in a black image: its crop (18 px around it, 24 px out) holds it in the
    middle 16 x 16 pixels. A box at the image's top right corner (a white band there): the crop reads
    black beyond the image, white inside it."""
    from rmi.pretrain import LabelledSet, object_crops

    images = np.zeros((1, 48, 48, 3), np.uint8)
    images[0, 10:22, 20:32] = 255
    images[0, :, 40:] = 255
    objects = np.array([[0, 10, 20, 22, 32, 3, 5], [0, 0, 40, 12, 48, 1, IGNORE]])
    labels = images[..., 0]
    data = LabelledSet(images, labels, labels, np.zeros((1, 15), np.float32), ["a"], objects, labels)
    crops, labels = object_crops(data, 24)
    assert crops.shape == (2, 24, 24, 3) and labels.tolist() == [[3, 5], [1, IGNORE]]
    white = crops[0, ..., 0] > 127
    assert white[5:19, 5:19].all() and not white[:3].any() and not white[-3:].any()
    assert 15**2 <= white.sum() <= 17**2
    corner = crops[1, ..., 0] > 127  # rows -3..15, columns 35..53 of the image
    assert not corner[:3].any() and not corner[:, -5:].any() and not corner[:, :5].any()
    assert corner[5:, 8:16].all()


def test_objects_pretraining_learns_and_loads_as_trunk_weights(generated, tmp_path):
    """The object-crop task: the loss falls below what the label frequencies alone give, and the
    trunk's weights load as the tiny trunk's (the fc dropped)."""
    root, _ = generated
    out = tmp_path / "tiny_objects.pth"
    summary = pretrain_trunk(
        "tiny",
        [source(root)],
        out,
        image_size=48,
        steps=250,
        batch_size=8,
        lr=1e-2,
        widths=WIDTHS,
        threads=2,
        task="objects",
        object_size=24,
    )
    assert summary["task"] == "objects" and summary["object_size"] == 24 and summary["crops"] >= 48, summary
    labels = load_labelled_set([source(root)], 48).objects[:, 5:]
    prior = 0.0  # cross-entropy of predicting each label's frequencies
    for column in labels.T:
        freq = np.bincount(column[column != IGNORE]) / np.count_nonzero(column != IGNORE)
        prior -= float((freq[freq > 0] * np.log(freq[freq > 0])).sum())
    assert summary["loss_end"] < 0.75 * prior, (prior, summary)
    cfg = {"pretrained": True, "freeze_trunk": True, "weights_path": None, "widths": list(WIDTHS)}
    trunk, _ = build_backbone("tiny", 16, cfg, str(out))
    assert set(torch.load(out, weights_only=True)) == set(trunk.body.state_dict())
