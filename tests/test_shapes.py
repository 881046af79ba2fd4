"""The generated datasets: deterministic, the exact RefCOCO layout, unique and well-spread expressions."""

from __future__ import annotations

import collections
import hashlib
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from pycocotools import mask as mask_utils

from builders import shapes_params
from rmi.data.refer import coco_file_name, load_refer
from rmi.data.shapes import COLOURS, GROUP_A, LOCATION_WORDS, generate
from rmi.text import tokenize

SMALL = {"train": 20, "val": 8, "testA": 6, "testB": 6}


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    summary = generate(shapes_params(SMALL), root / "shapes")
    return root / "shapes", summary


def test_deterministic_for_any_number_of_workers(shapes, tmp_path):
    root, _ = shapes
    generate(shapes_params(SMALL), tmp_path / "again", workers=2)  # each image from its own seed
    assert digest(tmp_path / "again") == digest(root)
    generate(shapes_params(SMALL, seed=6), tmp_path / "other")
    assert digest(tmp_path / "other") != digest(root)


def test_read_by_the_refer_loader(shapes):
    root, summary = shapes
    instances = json.loads((root / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    kinds = collections.Counter((a["iscrowd"], type(a["segmentation"]).__name__) for a in anns.values())
    # as in COCO: objects are polygons, crowds RLE; both occur
    assert set(kinds) == {(0, "list"), (1, "dict")}, kinds
    modes = {Image.open(p).mode for p in (root / "images").iterdir()}
    assert modes == {"RGB", "L"}
    sizes = {Image.open(p).size for p in (root / "images").iterdir()}
    assert len({w / h for w, h in sizes}) > 10  # varied aspect ratios
    for split, n_images in SMALL.items():
        records = load_refer(root, "unc", root / "images", split)
        assert len(records) == summary[split]["expressions"] > 0
        assert len({r.image_id for r in records}) <= n_images
        for rec in records[:15]:
            mask = rec.mask.decode()
            assert mask.sum() >= 40
            pixels = np.asarray(Image.open(rec.image_path).convert("RGB"), np.float64)
            inside, outside = pixels[mask].mean(0), pixels[~mask].mean(0)
            assert np.abs(inside - outside).max() > 10  # the mask covers a drawn object


def get_mask(ref: dict, anns: dict, images: dict) -> np.ndarray:
    """The refer toolkit's ``REFER.getMask`` (lichengunc/refer), line for line: polygons if
    ``segmentation[0]`` is a list, else RLE; decode; sum over the segments."""
    ann, image = anns[ref["ann_id"]], images[ref["image_id"]]
    if type(ann["segmentation"][0]) is list:
        rle = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
    else:
        rle = ann["segmentation"]
    m = np.sum(mask_utils.decode(rle), axis=2).astype(np.uint8)
    assert sum(mask_utils.area(rle)) == ann["area"]
    return m


@pytest.mark.parametrize("location_words", [True, False], ids=["shapes", "shapes+"])
def test_every_ref_decodes_as_the_refer_toolkit_does(tmp_path, location_words):
    """Every referred object is a polygon annotation that getMask decodes to the region the image shows
    in the object's colour, and to what the project's loader reads."""
    root = tmp_path / "s"
    generate({**shapes_params(SMALL, location_words=location_words), "grayscale_fraction": 0.0}, root)
    instances = json.loads((root / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    assert refs and all(anns[r["ann_id"]]["iscrowd"] == 0 for r in refs)
    loaded = {r.ref_id: r.mask.decode() for split in SMALL for r in load_refer(root, "unc", root / "images", split)}
    for ref in refs:
        m = get_mask(ref, anns, images)
        assert m.max() == 1  # the pieces of one object never overlap
        assert np.array_equal(m.astype(bool), loaded[ref["ref_id"]])
        pixels = np.asarray(Image.open(root / "images" / coco_file_name(ref["image_id"])).convert("RGB"), np.float64)
        median = np.median(pixels[m.astype(bool)], axis=0)
        nearest = min(COLOURS, key=lambda c: np.linalg.norm(median - np.array(COLOURS[c])))
        assert nearest == anns[ref["ann_id"]]["attributes"]["colour"], ref  # the object's colour is on its mask


def test_expressions_unique_per_image_and_spread_over_buckets(tmp_path):
    summary = generate(shapes_params({"train": 150}), tmp_path / "s")
    refs = pickle.loads((tmp_path / "s" / "refs(unc).p").read_bytes())
    per_image = collections.defaultdict(list)
    for ref in refs:
        for sent in ref["sentences"]:
            assert sent["tokens"] == tokenize(sent["raw"]) and sent["sent"] == " ".join(sent["tokens"])
            per_image[ref["image_id"]].append((ref["ref_id"], sent["sent"]))
    for sents in per_image.values():
        by_text = collections.defaultdict(set)
        for ref_id, text in sents:
            by_text[text].add(ref_id)
        assert all(len(ids) == 1 for ids in by_text.values())
    assert all(share >= 0.10 for share in summary["buckets"].values()), summary["buckets"]
    lengths = [len(s["tokens"]) for r in refs for s in r["sentences"]]
    assert min(lengths) == 1 and max(lengths) >= 12


def test_shapes_plus_has_no_location_words(tmp_path):
    generate(shapes_params({"train": 60}, location_words=False), tmp_path / "p")
    refs = pickle.loads((tmp_path / "p" / "refs(unc).p").read_bytes())
    words = {t for r in refs for s in r["sentences"] for t in s["tokens"]}
    assert not words & LOCATION_WORDS
    with_loc = pickle.loads(_gen_refs(tmp_path))
    assert {t for r in with_loc for s in r["sentences"] for t in s["tokens"]} & LOCATION_WORDS


def _gen_refs(tmp_path):
    generate(shapes_params({"train": 60}, location_words=True), tmp_path / "l")
    return (tmp_path / "l" / "refs(unc).p").read_bytes()


def test_test_splits_refer_to_category_groups(shapes):
    root, _ = shapes
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    categories = {c["id"]: c["name"] for c in json.loads((root / "instances.json").read_text())["categories"]}
    for ref in refs:
        name = categories[ref["category_id"]]
        if ref["split"] == "testA":
            assert name in GROUP_A
        if ref["split"] == "testB":
            assert name not in GROUP_A
    image_splits = collections.defaultdict(set)
    for ref in refs:
        image_splits[ref["image_id"]].add(ref["split"])
    assert all(len(s) == 1 for s in image_splits.values())


def test_cli_replaces_output_atomically(tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    cmd = [
        sys.executable,
        str(REPO / "workflow_scripts" / "generate_shapes.py"),
        "--params",
        json.dumps(shapes_params({"train": 3, "val": 2})),
        "--out-dir",
        str(out),
        "--threads",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert not (out / "stale.txt").exists() and (out / "instances.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]  # no temp dir left


def test_touching_objects_have_a_visible_border(tmp_path):
    """Two objects whose masks touch (or overlap under occlusion) never share a colour, and on a
    grayscale image their grey levels are MIN_LUMA_STEP apart: the image shows where one ends."""
    from scipy.ndimage import binary_dilation

    from rmi.data.shapes import MIN_LUMA_STEP, TOUCH_PX

    root = tmp_path / "s"
    generate({**shapes_params({"train": 60}), "grayscale_fraction": 0.5}, root)
    instances = json.loads((root / "instances.json").read_text())
    images = {i["id"]: i for i in instances["images"]}
    by_image = collections.defaultdict(list)
    for ann in instances["annotations"]:
        if not ann["iscrowd"]:
            by_image[ann["image_id"]].append(ann)
    touching = {"colour": 0, "gray": 0}
    for image_id, anns in by_image.items():
        info = images[image_id]
        gray = Image.open(root / "images" / info["file_name"]).mode == "L"
        masks = [get_mask({"ann_id": a["id"], "image_id": image_id}, {a["id"]: a}, images) > 0 for a in anns]
        for i in range(len(anns)):
            near = binary_dilation(masks[i], iterations=TOUCH_PX)
            for j in range(i + 1, len(anns)):
                if not (near & masks[j]).any():
                    continue
                a, b = (COLOURS[anns[k]["attributes"]["colour"]] for k in (i, j))
                touching["gray" if gray else "colour"] += 1
                assert a != b, (image_id, anns[i]["id"], anns[j]["id"])
                if gray:
                    luma = [0.299 * r + 0.587 * g + 0.114 * b_ for r, g, b_ in (a, b)]
                    assert abs(luma[0] - luma[1]) >= MIN_LUMA_STEP, (image_id, luma)
    assert touching["colour"] >= 10 and touching["gray"] >= 10, touching  # the rule was put to the test


@pytest.mark.parametrize("location_words", [True, False], ids=["shapes", "shapes+"])
def test_same_category_images_refer_to_shapes_that_have_a_twin(tmp_path, location_words):
    """With ``same_category: 1`` every referred shape shares its category with another shape of its
    image (as in RefCOCO), in every split's group."""
    root = tmp_path / "s"
    generate({**shapes_params(SMALL, location_words=location_words), "same_category": 1.0}, root)
    instances = json.loads((root / "instances.json").read_text())
    categories = collections.defaultdict(list)
    for ann in instances["annotations"]:
        if not ann["iscrowd"]:
            categories[ann["image_id"]].append(ann["category_id"])
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    assert {r["split"] for r in refs} == set(SMALL)
    assert all(categories[r["image_id"]].count(r["category_id"]) >= 2 for r in refs)


def test_no_same_category_share_draws_the_files_of_a_config_without_it(shapes, tmp_path):
    root, _ = shapes
    generate({**shapes_params(SMALL), "same_category": 0.0}, tmp_path / "zero")
    assert digest(tmp_path / "zero") == digest(root)
