"""The refer-toolkit loader (RefCOCO family) on small files written in the real layout."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from builders import one_line_error
from rmi.data.cache import CacheReader, build_cache
from rmi.data.refer import load_refer
from rmi.data.sources import load_split
from rmi.text import Vocab

#: image_id -> (height, width)
IMAGES = {1: (20, 30), 2: (16, 12), 3: (10, 10)}


def rect(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """``(h, w) bool``, True on rows y0..y1-1 and columns x0..x1-1."""
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def polygon(y0: int, x0: int, y1: int, x1: int) -> list[float]:
    """COCO polygon whose pycocotools decoding is exactly ``rect(.., y0, x0, y1, x1)``."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def column_major_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts, by hand: run lengths over the column-major pixels, 0s first."""
    flat = mask.flatten(order="F").astype(int)
    runs, current, n = [], 0, 0
    for v in flat:
        if v != current:
            runs.append(n)
            current, n = v, 0
        n += 1
    return runs + [n]


#: ann_id -> (image_id, segmentation, expected mask)
def annotations() -> dict[int, tuple[int, object, np.ndarray]]:
    h1, w1 = IMAGES[1]
    h2, w2 = IMAGES[2]
    h3, w3 = IMAGES[3]
    m12 = rect(h2, w2, 4, 2, 10, 7)
    m13 = rect(h3, w3, 1, 2, 4, 5)
    return {
        # two polygons: the mask is their union
        11: (
            1,
            [polygon(2, 3, 8, 12), polygon(10, 20, 14, 26)],
            rect(h1, w1, 2, 3, 8, 12) | rect(h1, w1, 10, 20, 14, 26),
        ),
        # compressed RLE (string counts, as COCO JSON stores crowd masks)
        12: (
            2,
            {
                "size": [h2, w2],
                "counts": mask_utils.encode(np.asfortranarray(m12.astype(np.uint8)))["counts"].decode("ascii"),
            },
            m12,
        ),
        # uncompressed RLE (list counts)
        13: (3, {"size": [h3, w3], "counts": column_major_runs(m13)}, m13),
        14: (1, [polygon(0, 0, 5, 5)], rect(h1, w1, 0, 0, 5, 5)),
    }


REFS = [
    # (ref_id, ann_id, image_id, split, [(sent_id, sent, raw)])
    (101, 11, 1, "train", [(1001, "the red box", "The red box."), (1002, "left thing", "Left thing")]),
    (104, 14, 1, "testA", [(1041, "top left", "Top left")]),
    (102, 12, 2, "train", [(1021, "tall one", "tall one!")]),
    (103, 13, 3, "val", [(1031, "small square", "Small square"), (1032, "the square", "The square.")]),
]


def make_ref(ref_id, ann_id, image_id, split, sents) -> dict:
    """A ref dict with every key the refer toolkit writes."""
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "category_id": 1,
        "sent_ids": [s[0] for s in sents],
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        "sentences": [{"sent_id": s, "sent": t, "raw": r, "tokens": t.split()} for s, t, r in sents],
    }


def write_refer_dataset(root: Path, name: str = "refcoco", refs=None, anns=None) -> dict:
    """Write ``root/<name>/refs(unc).p`` + ``instances.json`` and ``root/images/*.jpg``.

    Returns the loader source spec (``rmi.data.sources.load_split``) for it.
    """
    refer_dir, image_dir = root / name, root / "images"
    refer_dir.mkdir(parents=True)
    image_dir.mkdir(parents=True)
    anns = annotations() if anns is None else anns
    refs = [make_ref(*r) for r in REFS] if refs is None else refs
    rng = np.random.default_rng(0)
    for image_id, (h, w) in IMAGES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            image_dir / f"COCO_train2014_{image_id:012d}.jpg"
        )
    instances = {
        "info": {},
        "licenses": [],
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
        "images": [
            {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": h, "width": w}
            for i, (h, w) in IMAGES.items()
        ],
        "annotations": [
            {
                "id": a,
                "image_id": img,
                "category_id": 1,
                "bbox": [0, 0, 1, 1],
                "area": 1.0,
                "iscrowd": int(isinstance(seg, dict)),
                "segmentation": seg,
            }
            for a, (img, seg, _) in anns.items()
        ],
    }
    (refer_dir / "instances.json").write_text(json.dumps(instances))
    with open(refer_dir / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return {
        "format": "refer",
        "refer_dir": str(refer_dir),
        "split_by": "unc",
        "image_dir": str(image_dir),
        "sentence_field": "sent",
    }


def load(spec: dict, split: str, **kw):
    return load_refer(Path(spec["refer_dir"]), spec["split_by"], Path(spec["image_dir"]), split, **kw)


def test_records_in_ref_then_sentence_order(tmp_path):
    spec = write_refer_dataset(tmp_path)
    recs = load(spec, "train")
    assert [(r.sent_id, r.ref_id, r.image_id, r.sentence, r.split) for r in recs] == [
        (1001, 101, 1, "the red box", "train"),
        (1002, 101, 1, "left thing", "train"),
        (1021, 102, 2, "tall one", "train"),
    ]
    assert recs[0].image_path == tmp_path / "images" / "COCO_train2014_000000000001.jpg"
    assert recs[2].image_path.is_file()
    assert recs[0].mask is recs[1].mask and recs[0].mask.key == "ann11"
    assert recs[0].mask.where == f"{tmp_path / 'refcoco' / 'instances.json'} ann 11"
    assert [r.sentence for r in load(spec, "val", sentence_field="raw")] == ["Small square", "The square."]
    assert load_split(spec, "testA")[0].sent_id == 1041


def test_masks_decode_exactly(tmp_path):
    spec = write_refer_dataset(tmp_path)
    expected = {a: m for a, (_, _, m) in annotations().items()}
    for split in ("train", "val", "testA"):
        for rec in load(spec, split):
            got = rec.mask.decode()
            ann_id = int(rec.mask.key[3:])
            assert got.dtype == bool and got.shape == IMAGES[rec.image_id]
            np.testing.assert_array_equal(got, expected[ann_id], err_msg=f"ann {ann_id}")


def test_cache_round_trip_from_loader(tmp_path):
    spec = write_refer_dataset(tmp_path)
    recs = load_split(spec, "train")
    vocab = Vocab.build(r.sentence for r in recs)
    build_cache(recs, vocab, tmp_path / "train.h5", image_size=32, dataset="refcoco", split="train", train=True)
    reader = CacheReader(tmp_path / "train.h5")
    assert list(reader.sent_id) == [1001, 1002, 1021] and reader.n_images == 2
    np.testing.assert_array_equal(reader.original_mask(2), annotations()[12][2])


def test_degenerate_polygons_are_dropped_with_a_warning(tmp_path, caplog):
    h, w = IMAGES[1]
    anns = annotations()
    anns[11] = (1, [polygon(2, 3, 8, 12), [1, 1, 5, 5]], rect(h, w, 2, 3, 8, 12))
    anns[14] = (1, [[1, 1, 5, 5], [3, 3]], None)
    spec = write_refer_dataset(tmp_path, anns=anns)
    rec = load(spec, "train")[0]
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(rec.mask.decode(), anns[11][2])
    assert "ann 11: dropped 1 polygon(s) with fewer than 3 points" in caplog.text
    msg = one_line_error(load(spec, "testA")[0].mask.decode)
    assert "instances.json ann 14" in msg and "no valid segmentation" in msg


def test_missing_and_corrupt_pickle(tmp_path):
    spec = write_refer_dataset(tmp_path)
    refs = Path(spec["refer_dir"]) / "refs(unc).p"
    data = refs.read_bytes()
    refs.write_bytes(data[: len(data) // 2])
    msg = one_line_error(load, spec, "train")
    assert msg.startswith(f"{refs}: truncated or corrupt pickle")
    refs.write_bytes(b"garbage that is no pickle")
    assert "truncated or corrupt pickle" in one_line_error(load, spec, "train")
    refs.write_bytes(pickle.dumps({"refs": []}))
    assert one_line_error(load, spec, "train") == f"{refs}: expected a pickled list of refs, got dict"
    refs.write_bytes(pickle.dumps([Path("x")]))  # a global: refused, nothing is executed
    assert "refuses global" in one_line_error(load, spec, "train")
    refs.unlink()
    assert one_line_error(load, spec, "train") == f"{refs}: file is missing"


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda r: r.pop("ann_id"), "ref 101 lacks key 'ann_id'"),
        (lambda r: r.pop("split"), "ref 101 lacks key 'split'"),
        (lambda r: r["sentences"][1].pop("sent"), "ref 101: a sentence lacks key 'sent'"),
        (lambda r: r["sentences"][0].update(sent=None), "ref 101 sentence 1001: 'sent' is not a string"),
        (lambda r: r.update(ann_id=999), "ref 101: ann_id 999 is not in"),
        (lambda r: r.update(ann_id=12), "ref 101: image_id 1 but ann 12 is on image 2"),
        (lambda r: r["sentences"][1].update(sent_id=1001), "ref 101: duplicate sent_id 1001"),
    ],
)
def test_bad_refs_name_the_ref_and_key(tmp_path, edit, problem):
    refs = [make_ref(*r) for r in REFS]
    edit(refs[0])
    spec = write_refer_dataset(tmp_path, refs=refs)
    msg = one_line_error(load, spec, "train")
    assert msg.startswith(f"{Path(spec['refer_dir']) / 'refs(unc).p'}: ") and problem in msg


def test_unknown_image(tmp_path):
    anns = annotations()
    anns[11] = (7, anns[11][1], None)
    refs = [make_ref(*r) for r in REFS]
    refs[0]["image_id"] = 7
    spec = write_refer_dataset(tmp_path, refs=refs, anns=anns)
    assert "ref 101: image_id 7 is not in" in one_line_error(load, spec, "train")


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d.pop("annotations"), "no 'annotations' list"),
        (lambda d: d.pop("images"), "no 'images' list"),
        (lambda d: d["annotations"][1].pop("segmentation"), "annotations entry 12 lacks key 'segmentation'"),
        (lambda d: d["images"][0].pop("height"), "images entry 1 lacks key 'height'"),
    ],
)
def test_bad_instances_name_the_file_and_key(tmp_path, edit, problem):
    spec = write_refer_dataset(tmp_path)
    inst = Path(spec["refer_dir"]) / "instances.json"
    data = json.loads(inst.read_text())
    edit(data)
    inst.write_text(json.dumps(data))
    assert one_line_error(load, spec, "train") == f"{inst}: {problem}"


def test_invalid_json(tmp_path):
    spec = write_refer_dataset(tmp_path)
    inst = Path(spec["refer_dir"]) / "instances.json"
    inst.write_text(inst.read_text()[:100])
    msg = one_line_error(load, spec, "train")
    assert msg.startswith(f"{inst}: not valid JSON")
    inst.write_text("[1, 2]")
    assert one_line_error(load, spec, "train") == f"{inst}: expected a JSON object, got list"


def test_empty_split_lists_the_splits_present(tmp_path):
    spec = write_refer_dataset(tmp_path)
    msg = one_line_error(load, spec, "testB")
    refs = Path(spec["refer_dir"]) / "refs(unc).p"
    assert msg == f"{refs}: split 'testB' has no expressions (splits present: testA, train, val)"


def test_missing_and_corrupt_images_are_errors_of_the_cache_builder(tmp_path):
    spec = write_refer_dataset(tmp_path)
    recs = load(spec, "train")
    vocab = Vocab.build(r.sentence for r in recs)
    image = recs[2].image_path
    image.write_bytes(image.read_bytes()[:100])
    msg = one_line_error(build_cache, recs, vocab, tmp_path / "a.h5", image_size=32, train=True)
    assert msg.startswith(f"{image}: corrupt or truncated image")
    image.unlink()
    assert (
        one_line_error(build_cache, recs, vocab, tmp_path / "a.h5", image_size=32, train=True)
        == f"{image}: image file is missing"
    )
    assert not list(tmp_path.glob("*a.h5*"))
