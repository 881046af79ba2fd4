"""The ReferIt loader on small files in the real layout (query JSON, images/, mask/*.mat)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from builders import one_line_error
from rmi.data.cache import CacheReader, build_cache, tokenize_expressions
from rmi.data.masks import MatFileMask
from rmi.data.referit import load_referit
from rmi.data.sources import load_split
from rmi.text import Vocab

#: the real split file, kept beside the repository (``../shared/data/referit``)
REAL_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "referit" / "referit_query_test.json"

#: image -> (height, width)
IMAGES = {"7": (20, 30), "12": (16, 12)}
#: crop -> (expressions, foreground rectangle y0, x0, y1, x1); key order deliberately unsorted
CROPS = {
    "12_1": (["car"], (4, 2, 10, 7)),
    "7_2": (["left dog", "the dog"], (5, 0, 20, 10)),
    "7_1": (["sky"], (0, 0, 5, 30)),
}


def crop_mask(name: str) -> np.ndarray:
    h, w = IMAGES[name.split("_")[0]]
    y0, x0, y1, x1 = CROPS[name][1]
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def write_referit_dataset(root: Path, split: str = "test", crops=None) -> dict:
    """``root/referit_query_<split>.json``, ``root/images/<image>.jpg``, ``root/mask/<crop>.mat``.

    Masks are stored as the real ones: ``segimg_t`` (uint8) is 0 on the object, 1 elsewhere.
    Returns the loader source spec (``rmi.data.sources.load_split``).
    """
    (root / "images").mkdir(parents=True)
    (root / "mask").mkdir()
    crops = CROPS if crops is None else crops
    rng = np.random.default_rng(0)
    for image, (h, w) in IMAGES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{image}.jpg")
    for name in crops:
        scipy.io.savemat(root / "mask" / f"{name}.mat", {"segimg_t": (~crop_mask(name)).astype(np.uint8)})
    (root / f"referit_query_{split}.json").write_text(json.dumps({n: texts for n, (texts, _) in crops.items()}))
    return {
        "format": "referit",
        "query_dir": str(root),
        "image_dir": str(root / "images"),
        "mask_dir": str(root / "mask"),
    }


def load(root: Path, split: str = "test"):
    return load_referit(root / f"referit_query_{split}.json", root / "images", root / "mask", split)


def test_records_ids_and_order(tmp_path):
    write_referit_dataset(tmp_path)
    recs = load(tmp_path)
    # crops sorted numerically by (image, k): 7_1, 7_2, 12_1 (not "12" < "7" as strings)
    assert [(r.sent_id, r.ref_id, r.image_id, r.sentence, r.split) for r in recs] == [
        (700100, 7001, 7, "sky", "test"),
        (700200, 7002, 7, "left dog", "test"),
        (700201, 7002, 7, "the dog", "test"),
        (1200100, 12001, 12, "car", "test"),
    ]
    assert recs[0].image_path == tmp_path / "images" / "7.jpg" and recs[0].image_path.is_file()
    assert recs[1].mask is recs[2].mask
    assert recs[1].mask == MatFileMask(tmp_path / "mask" / "7_2.mat", key="7_2")
    for rec in recs:
        np.testing.assert_array_equal(rec.mask.decode(), crop_mask(rec.mask.key))


def test_through_sources_and_cache(tmp_path):
    spec = write_referit_dataset(tmp_path)
    recs = load_split(spec, "test")
    build_cache(
        recs,
        Vocab.build(r.sentence for r in recs),
        tmp_path / "test.h5",
        image_size=32,
        dataset="referit",
        split="test",
        train=False,
    )
    reader = CacheReader(tmp_path / "test.h5")
    assert list(reader.sent_id) == [700100, 700200, 700201, 1200100] and reader.n_images == 2
    np.testing.assert_array_equal(reader.original_mask(3), crop_mask("12_1"))


def test_real_split_file_ids_are_unique():
    if not REAL_TEST.is_file():
        pytest.skip("real ReferIt split file not available")
    recs = load_referit(REAL_TEST, Path("images"), Path("mask"), "test")
    assert len(recs) == 60105
    assert len({r.sent_id for r in recs}) == 60105 and len({r.ref_id for r in recs}) == 49730


def test_real_test_split_scores_60105_expressions():
    """Official ReferIt test count: every expression of the split file reaches the eval cache."""
    if not REAL_TEST.is_file():
        pytest.skip("real ReferIt split file not available")
    spec = {"format": "referit", "query_dir": str(REAL_TEST.parent), "image_dir": "images", "mask_dir": "mask"}
    records = load_split(spec, "test")
    kept, skipped = tokenize_expressions(records, train=False)
    assert len(kept) == 60105 and not skipped
    assert [rec for rec, _ in kept] == records


def test_missing_file_lists_the_split_files(tmp_path):
    write_referit_dataset(tmp_path, split="trainval")
    msg = one_line_error(load, tmp_path, "test")
    assert msg == f"{tmp_path / 'referit_query_test.json'}: file is missing (split files present: trainval)"


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"7_1": ["sky"]', "not valid JSON"),
        ('[["7_1", "sky"]]', "expected a JSON object mapping crop names to expressions, got list"),
        ('{"seven_1": ["sky"]}', "crop name 'seven_1' is not '<image>_<k>' with numeric parts"),
        ('{"7": ["sky"]}', "crop name '7' is not '<image>_<k>' with numeric parts"),
        ('{"7_1": "sky"}', "crop '7_1': expected a list of strings"),
        ('{"7_1": ["sky", 3]}', "crop '7_1': expected a list of strings"),
        ('{"7_1000": ["sky"]}', "crop '7_1000': k >= 1000 would make ref_id collide"),
        ('{"7_1": ["a"], "07_1": ["b"]}', "gives the same ids as another crop name"),
        ("{}", "split 'test' has no expressions (split files present: test)"),
        ('{"7_1": []}', "split 'test' has no expressions"),
    ],
)
def test_bad_query_files(tmp_path, content, problem):
    write_referit_dataset(tmp_path)
    query = tmp_path / "referit_query_test.json"
    query.write_text(content)
    msg = one_line_error(load, tmp_path)
    assert msg.startswith(f"{query}: ") and problem in msg


def test_bad_mask_files(tmp_path):
    write_referit_dataset(tmp_path)
    recs = load(tmp_path)
    mat = tmp_path / "mask" / "7_2.mat"
    scipy.io.savemat(mat, {"other": np.zeros((2, 2))})
    assert one_line_error(recs[1].mask.decode) == f"{mat}: no 'segimg_t' variable in .mat file"
    mat.write_bytes(b"MATLAB 5.0 truncated")
    assert one_line_error(recs[1].mask.decode).startswith(f"{mat}: cannot read .mat file")
    mat.unlink()
    assert one_line_error(recs[1].mask.decode) == f"{mat}: mask file is missing"


def test_missing_mask_is_a_counted_skip_in_the_cache(tmp_path):
    write_referit_dataset(tmp_path)
    recs = load(tmp_path)
    (tmp_path / "mask" / "7_2.mat").unlink()
    attrs = build_cache(recs, Vocab.build(r.sentence for r in recs), tmp_path / "c.h5", image_size=32, train=True)
    assert attrs["n_skipped"] == 2 and json.loads(attrs["skipped"]) == {"bad mask": 2}
    assert list(CacheReader(tmp_path / "c.h5").sent_id) == [700100, 1200100]


@pytest.mark.parametrize("problem", ["missing", "no segimg_t", "corrupt"])
def test_bad_mask_in_an_eval_split_is_a_one_line_error(tmp_path, problem):
    write_referit_dataset(tmp_path)
    recs = load(tmp_path)
    mat = tmp_path / "mask" / "7_2.mat"
    if problem == "missing":
        mat.unlink()
    elif problem == "no segimg_t":
        scipy.io.savemat(mat, {"other": np.zeros((2, 2))})
    else:
        mat.write_bytes(b"MATLAB 5.0 truncated")
    vocab = Vocab.build(r.sentence for r in recs)
    msg = one_line_error(build_cache, recs, vocab, tmp_path / "c.h5", image_size=32, split="test", train=False)
    assert msg.startswith(f"{mat}: ")
    assert not list(tmp_path.glob("*c.h5*"))


def test_training_split_skips_are_counted_per_reason_and_eval_keeps_empty_masks(tmp_path):
    write_referit_dataset(tmp_path, split="trainval")
    recs = load(tmp_path, "trainval")
    scipy.io.savemat(tmp_path / "mask" / "7_1.mat", {"segimg_t": np.ones((20, 30), np.uint8)})  # empty object
    scipy.io.savemat(tmp_path / "mask" / "12_1.mat", {"other": np.zeros((2, 2))})
    vocab = Vocab.build(r.sentence for r in recs)
    attrs = build_cache(recs, vocab, tmp_path / "train.h5", image_size=32, train=True)
    assert json.loads(attrs["skipped"]) == {"bad mask": 1, "empty mask": 1} and attrs["role"] == "train"
    assert list(CacheReader(tmp_path / "train.h5").sent_id) == [700200, 700201]
    # evaluated, the same files: the empty object is kept (and scored), the key-less .mat is an error
    msg = one_line_error(build_cache, recs, vocab, tmp_path / "val.h5", image_size=32, train=False)
    assert msg == f"{tmp_path / 'mask' / '12_1.mat'}: no 'segimg_t' variable in .mat file"
    (tmp_path / "mask" / "12_1.mat").unlink()
    scipy.io.savemat(tmp_path / "mask" / "12_1.mat", {"segimg_t": (~crop_mask("12_1")).astype(np.uint8)})
    attrs = build_cache(recs, vocab, tmp_path / "val.h5", image_size=32, train=False)
    reader = CacheReader(tmp_path / "val.h5")
    assert attrs["n_skipped"] == 0 and attrs["role"] == "eval" and len(reader) == 4
    assert not reader.original_mask(0).any()


def test_missing_image_is_an_error_of_the_cache_builder(tmp_path):
    write_referit_dataset(tmp_path)
    recs = load(tmp_path)
    (tmp_path / "images" / "12.jpg").unlink()
    vocab = Vocab.build(r.sentence for r in recs)
    msg = one_line_error(build_cache, recs, vocab, tmp_path / "c.h5", image_size=32, train=False)
    assert msg == f"{tmp_path / 'images' / '12.jpg'}: image file is missing"
    (tmp_path / "images" / "7.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    msg = one_line_error(build_cache, recs, vocab, tmp_path / "c.h5", image_size=32, train=False)
    assert msg.startswith(f"{tmp_path / 'images' / '7.jpg'}: corrupt or truncated image")
