"""benchmarks/bench_pretrain_task.py: each variant's config validates and reaches rule pretrain_backbone as
the task and pooling it names, with nothing else of the demo's config changed."""

from __future__ import annotations

import importlib.util
import json
import shlex

import pytest
import yaml
from conftest import REPO, snakemake

spec = importlib.util.spec_from_file_location("bench_pretrain_task", REPO / "benchmarks" / "bench_pretrain_task.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("dense", {"task": "dense"}),
        ("classify:avg", {"task": "classify", "pooling": "avg"}),
        ("objects", {"task": "objects"}),
    ],
)
def test_variant_reaches_the_pretraining_rule(tmp_path, variant, expected):
    configfile = tmp_path / "variant.yaml"
    configfile.write_text(yaml.safe_dump(bench.variant_config(BASE, variant, "results_v")))
    target = "results_v/metrics/shapes/tiny_rmi/val.json"
    out = snakemake(tmp_path, "-n", "--printshellcmds", target, configfile=configfile).stdout
    pretrain = [line for line in out.splitlines() if "workflow_scripts.pretrain_backbone" in line]
    assert len(pretrain) == 1
    words = shlex.split(pretrain[0])
    want = {**BASE["backbones"]["tiny"]["pretrain"], **expected}
    if expected["task"] != "dense":
        del want["extent"]  # an image- or crop-level task has no per-pixel extent head
    assert json.loads(words[words.index("--params") + 1]) == want
    assert "tiny_lstm" not in out and "results_v/weights/tiny.pth" in out


def test_pretrain_summary_is_read_from_the_log(tmp_path):
    summary = {"task": "classify", "pooling": "max", "accuracy": 0.88, "colours": ["red", "blue"]}
    log = tmp_path / "tiny.log"
    log.write_text(
        "2026-11-27 21:04:00,000 INFO rmi.pretrain: step 1500/1500 loss 0.2\n"
        f"2026-11-27 21:04:01,000 INFO rmi.pretrain: pretrained tiny trunk -> r/weights/tiny.pth: {summary}\n"
    )
    assert bench.pretrain_summary(log) == summary
