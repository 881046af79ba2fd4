"""config/gpu.yaml (the paper's Table 1 in miniature on one GPU) through its whole DAG on the CPU, at toy
sizes: both pretraining tasks (R: image-level labels, D: dense labels), both fusions at the paper's
dimensions, DenseCRF, the tables and figures."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, planned_jobs, snakemake

GPU_CONFIG = REPO / "config" / "gpu.yaml"


def toy_gpu_config(path):
    """config/gpu.yaml with its sizes, steps and splits shrunk to seconds; every other key as shipped."""
    cfg = yaml.safe_load(GPU_CONFIG.read_text())
    cfg["image_size"] = 32
    gen = cfg["datasets"]["shapes"]["generator"]
    gen.update(images={"train": 8, "val": 3, "testA": 2, "testB": 2}, min_side=32, max_side=48)
    cfg["datasets"]["shapes"]["eval_splits"] = ["val"]
    for backbone in cfg["backbones"].values():
        backbone["pretrain"] = {"steps": 2, "batch_size": 2, "lr": 1.0e-3}
    cfg["train"].update(steps=2, checkpoint_every=1)
    cfg["predict"]["batch_size"] = 4
    cfg["figures"].update(n_progression=1, n_long=1, n_qualitative=1)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_gpu_config_plans_the_miniature_grid(tmp_path):
    shipped = yaml.safe_load(GPU_CONFIG.read_text())
    assert shipped["results_dir"] == "results/gpu" and shipped["image_size"] == 320
    assert set(shipped["backbones"]) == {"resnet101", "deeplab101"} and shipped["fusions"] == ["lstm", "rmi"]
    assert all(bb["pretrain"] and bb["weights_path"] is None for bb in shipped["backbones"].values())
    assert shipped["model"] == dict(visual_dim=1000, embed_dim=1000, lstm_dim=1000, mlstm_dim=500, mlp_dim=500)
    train = shipped["train"]
    paper_recipe = (train["batch_size"], train["lr"], train["loss_reduction"], train["group_by_image"])
    assert paper_recipe == (1, 2.5e-4, "sum", False)
    jobs = planned_jobs(snakemake(tmp_path, "-n", "results/gpu/table1.csv", configfile=GPU_CONFIG).stdout)
    assert jobs["pretrain_backbone"] == 2 and jobs["train"] == 4 and "fetch_weights" not in jobs
    assert jobs["predict"] == 12 and jobs["densecrf"] == 12 and jobs["evaluate"] == 24


@pytest.mark.slow
def test_gpu_config_whole_dag_on_the_cpu(tmp_path):
    config = toy_gpu_config(tmp_path / "gpu_toy.yaml")
    work = tmp_path / "work"
    work.mkdir()
    snakemake(work, configfile=config)
    res = work / "results" / "gpu"
    table = pd.read_csv(res / "table1.csv").set_index("model")
    assert list(table.index) == [f"{b}+{f}{c}" for b in "RD" for c in ("", "+DCRF") for f in ("LSTM", "RMI")]
    assert table["shapes val"].between(0, 100).all()
    for backbone, task in (("resnet101", "classify"), ("deeplab101", "dense")):
        log = (res / "logs" / "pretrain_backbone" / f"{backbone}.log").read_text()
        assert f"({task}" in log and ("avg pooling" in log) == (task == "classify")
        state = torch.load(res / "weights" / f"{backbone}.pth", weights_only=True)
        assert ("fc.weight" in state) == (backbone == "resnet101")
        assert any(k.startswith("backbone.layer4.") for k in state) == (backbone == "deeplab101")
    for backbone in ("resnet101", "deeplab101"):
        assert (res / "figures" / "shapes" / backbone / "qualitative.png").stat().st_size > 1000
    assert planned_jobs(snakemake(work, "-n", configfile=config).stdout) == {}
