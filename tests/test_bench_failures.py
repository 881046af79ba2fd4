"""benchmarks/bench_failures.py: the kinds of expression, the contrast of a target, and the breakdown of
a finished tiny run's scores."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
from conftest import REPO

spec = importlib.util.spec_from_file_location("bench_failures", REPO / "benchmarks" / "bench_failures.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_expression_kind_takes_the_first_kind_of_word():
    assert bench.expression_kind("the red ring on the left") == "location"
    assert bench.expression_kind("the small red ring") == "size"
    assert bench.expression_kind("Red ring.") == "colour"
    assert bench.expression_kind("a ring in the picture") == "category"


def test_contrast_against_the_background_around_the_target():
    image = np.full((40, 40, 3), 100, np.uint8)
    target = np.zeros((40, 40), bool)
    target[10:20, 10:20] = True
    image[target] = (130, 140, 100)  # 30 + 40 over the background: distance 50
    other = np.zeros_like(target)
    other[10:20, 20:30] = True
    image[other] = (0, 0, 0)  # an object beside it: not background
    assert np.isclose(bench.contrast(image, target, target | other), 50.0)
    assert np.isnan(bench.contrast(image, np.ones((40, 40), bool), np.ones((40, 40), bool)))


def test_breakdown_of_a_finished_run(completed_tiny_run):
    results = completed_tiny_run / "results"
    lines = bench.analyse(results, "shapes", "val", ["tiny_rmi", "tiny_rmi_dcrf"])
    scores = pd.read_csv(results / "metrics" / "shapes" / "tiny_rmi" / "val.csv")
    rmi, dcrf = lines
    assert rmi["n"] == len(scores) == sum(rmi["n_by_kind"].values())
    assert rmi["hits"] == round(float((scores["iou"] >= 0.5).mean()), 3)
    assert len(rmi["hits_by_area"]) == 4 and rmi["area_quartiles"] == sorted(rmi["area_quartiles"])
    misses = int((scores["iou"] < 0.5).sum())
    assert rmi["misses"] == misses and 0 <= rmi["empty"] <= 1 and 0 <= rmi["peak_on_target"] <= 1
    assert "misses" not in dcrf  # a DenseCRF model has masks, not logits
