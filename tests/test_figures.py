"""Figures: the per-word progression ends at the model's prediction; files are sane and deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from builders import build_shapes_caches, train_tiny
from rmi.crf import CRFParams
from rmi.data.cache import CacheReader
from rmi.data.dataset import ReferDataset
from rmi.data.transforms import upsample_logits
from rmi.figures import loss_curve, progression, progression_steps, qualitative_grid, response_maps, select_expressions
from rmi.inference import predict_logits, predict_split
from rmi.model_file import load_model
from rmi.prediction_file import PredictionReader

S = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    caches = build_shapes_caches(root, {"train": 12, "testA": 8}, image_size=S)
    models = {f: train_tiny(root, caches, f) for f in ("lstm", "rmi")}
    return root, caches, models


@pytest.mark.parametrize("fusion", ["lstm", "rmi"])
def test_progression_last_step_is_the_final_prediction(setup, fusion):
    _, caches, paths = setup
    model, _ = load_model(paths[fusion])
    cache = CacheReader(caches["testA"])
    pipeline = predict_logits(model, ReferDataset(caches["testA"], with_targets=False), 8, torch.device("cpu"))
    for row in select_expressions(cache, 3, 2, seed=0):
        steps = progression_steps(model, cache, row)
        n = int(cache.n_tokens[row])
        assert steps["logits"].shape == (n, S, S) and steps["masks"].dtype == bool
        final = upsample_logits(pipeline[row], S)
        np.testing.assert_allclose(steps["logits"][-1], final, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(steps["masks"][-1], final > 0)
        if fusion == "rmi":
            assert steps["response"].shape == (n, S, S)
            assert np.isfinite(steps["response"]).all()
        else:
            assert "response" not in steps
        if n > 1:  # the prediction does change while reading
            assert not np.allclose(steps["logits"][0], steps["logits"][-1])


def test_figure_files_are_sane_and_deterministic(setup, tmp_path):
    root, caches, paths = setup
    models = {k.upper(): load_model(v)[0] for k, v in paths.items()}
    cache = CacheReader(caches["testA"])
    row = select_expressions(cache, 1, 1, seed=0)[-1]  # the longest expression
    predict_split(paths["rmi"], caches["testA"], tmp_path / "pred.h5", batch_size=8)
    outputs = {}
    for run in ("a", "b"):
        out = tmp_path / run
        progression(models, cache, row, out / "progression.png")
        response_maps(models["RMI"], cache, row, CRFParams(), out / "response.png")
        with PredictionReader(tmp_path / "pred.h5") as pred:
            qualitative_grid(cache, [0, 1, 2], {"T+RMI": pred}, out / "qualitative.png")
        loss_curve(root / "rmi" / "train_log.csv", out / "loss.png", title="tiny+rmi")
        outputs[run] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert outputs["a"] == outputs["b"]
    n_words = int(cache.n_tokens[row])
    for name in outputs["a"]:
        with Image.open(tmp_path / "a" / name) as im:
            width, height = im.size
            assert im.format == "PNG" and width >= 200 and height >= 100
            assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
        assert (tmp_path / "a" / name).stat().st_size > 5_000
        if name == "progression.png":  # two model rows, one column per word + ground truth
            assert width > 1.6 * (n_words + 1) * 80 * 0.9 and height > 2 * 80
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left behind


def test_response_maps_need_rmi(setup, tmp_path):
    _, caches, paths = setup
    with pytest.raises(ValueError, match="RMI"):
        response_maps(load_model(paths["lstm"])[0], CacheReader(caches["testA"]), 0, CRFParams(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
