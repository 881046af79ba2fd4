"""benchmarks/bench_predict_iou.py: the expressions of the images named, from every split, with their
ground truth; an image without expressions is named in the error."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
from conftest import REPO

from builders import shapes_params
from rmi.data.shapes import generate

spec = importlib.util.spec_from_file_location("bench_predict_iou", REPO / "benchmarks" / "bench_predict_iou.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_expressions_of_the_images_named(tmp_path):
    root = tmp_path / "shapes"
    generate(shapes_params({"train": 3, "val": 2, "testA": 1, "testB": 1}), root)
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    wanted = [5, 1]  # val's second image, then train's first
    records = bench.expressions_of(root, wanted)
    expected = [(s["sent"], r["split"]) for i in wanted for r in refs if r["image_id"] == i for s in r["sentences"]]
    assert [(e.sentence, e.split) for e in records] == expected
    assert {e.split for e in records} == {"train", "val"}
    for e in records:
        truth = e.mask.decode()
        assert truth.dtype == bool and 0 < np.count_nonzero(truth) < truth.size
    with pytest.raises(SystemExit, match=r"no expression on image\(s\) \[99\]"):
        bench.expressions_of(root, [1, 99])
