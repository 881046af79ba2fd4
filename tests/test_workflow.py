"""The Snakemake DAG end to end: contract files, pure-aggregation tables, reruns, config isolation,
the paper grid plan."""

from __future__ import annotations

import json
import shutil

import h5py
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TINY_CONFIG, TINY_RESULTS, planned_jobs, snakemake

MODELS = ["tiny_lstm", "tiny_rmi", "tiny_lstm_dcrf", "tiny_rmi_dcrf"]
SPLITS = ["val", "testA"]


def test_contract_files(completed_tiny_run):
    res = completed_tiny_run / TINY_RESULTS
    table = pd.read_csv(res / "table1.csv")
    assert list(table.columns) == ["model", "shapes val", "shapes testA"]
    assert list(table["model"]) == ["T+LSTM", "T+RMI", "T+LSTM+DCRF", "T+RMI+DCRF"]
    assert (res / "table1.md").read_text().count("T+RMI") == 2
    assert {"model", "dataset", "split", "n", "oIoU", "mIoU", "prec@0.5", "prec@0.9"} <= set(
        pd.read_csv(res / "precision.csv").columns
    )
    assert list(pd.read_csv(res / "table2.csv").columns)[1:] == ["1-2", "3", "4-5", "6-20"]
    for fusion in ("lstm", "rmi"):
        model_dir = res / "models" / "shapes" / f"tiny_{fusion}"
        assert (model_dir / "model.pt").stat().st_size > 1000
        assert list(pd.read_csv(model_dir / "train_log.csv").columns) == ["step", "loss", "lr", "time"]
    for model in MODELS:
        for split in SPLITS:
            with h5py.File(res / "predictions" / "shapes" / model / f"{split}.h5") as f:
                assert f["sent_id"].dtype == "int64" and "rebuild" in f.attrs
            metrics = pd.read_csv(res / "metrics" / "shapes" / model / f"{split}.csv")
            assert list(metrics.columns) == ["sent_id", "ref_id", "n_tokens", "intersection", "union", "iou"]
            summary = json.loads((res / "metrics" / "shapes" / model / f"{split}.json").read_text())
            assert {"overall_iou", "mean_iou", "prec@0.5", "prec@0.9", "n"} <= set(summary)
            assert summary["n"] == len(metrics)
    assert not list(res.rglob("*.tmp*")), "temporary files left behind"


def test_table1_is_pure_aggregation(completed_tiny_run):
    res = completed_tiny_run / TINY_RESULTS
    table = pd.read_csv(res / "table1.csv").set_index("model")
    letters = {
        "tiny_lstm": "T+LSTM",
        "tiny_rmi": "T+RMI",
        "tiny_lstm_dcrf": "T+LSTM+DCRF",
        "tiny_rmi_dcrf": "T+RMI+DCRF",
    }
    for model, row in letters.items():
        for split in SPLITS:
            m = pd.read_csv(res / "metrics" / "shapes" / model / f"{split}.csv")
            assert table.loc[row, f"shapes {split}"] == pytest.approx(
                round(100 * m["intersection"].sum() / m["union"].sum(), 2), abs=1e-9
            )


def test_complete_run_is_up_to_date(completed_tiny_run):
    assert planned_jobs(snakemake(completed_tiny_run, "-n").stdout) == {}


def changed_config(tmp_path, section: str, key: str, value, **top):
    """The tiny config with one setting (and top-level keys ``top``) changed, written to a temporary file."""
    cfg = {**yaml.safe_load(TINY_CONFIG.read_text()), **top}
    cfg[section][key] = value
    path = tmp_path / f"{section}_{key}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_crf_change_reruns_only_crf_and_downstream(completed_tiny_run, tmp_path):
    cfg = changed_config(tmp_path, "crf", "bilateral_sxy", 30)
    jobs = planned_jobs(snakemake(completed_tiny_run, "-n", configfile=cfg).stdout)
    # 2 fusions x 2 splits of CRF, their evaluations, the tables; the raw-logit models stay
    assert jobs.get("densecrf") == 4 and jobs.get("evaluate") == 4 and jobs.get("tables") == 1
    assert "train" not in jobs and "predict" not in jobs and "cache" not in jobs


def test_train_change_reruns_training(completed_tiny_run, tmp_path):
    cfg = changed_config(tmp_path, "train", "lr", 0.001)
    jobs = planned_jobs(snakemake(completed_tiny_run, "-n", configfile=cfg).stdout)
    assert jobs.get("train") == 2 and jobs.get("predict") == 4 and jobs.get("evaluate") == 8
    assert "cache" not in jobs and "generate_shapes" not in jobs


def test_checkpoint_interval_change_reruns_nothing(completed_tiny_run, tmp_path):
    cfg = changed_config(tmp_path, "train", "checkpoint_every", 3)
    assert planned_jobs(snakemake(completed_tiny_run, "-n", configfile=cfg).stdout) == {}


def test_generator_version_bump_regenerates_the_data(completed_tiny_run, tmp_path):
    """``SHAPES_VERSION`` (rmi/data/shapes.py) is a params of generate_shapes: a copy of the workflow
    plans nothing on the completed run, and with the version bumped it draws the set again and redoes
    what depends on it (the generator's code is not an input Snakemake could see change)."""
    from rmi.data.shapes import SHAPES_VERSION

    copy = tmp_path / "workflow"
    for name in ("rules", "config", "report", "envs"):
        shutil.copytree(REPO / name, copy / name)
    shutil.copy(REPO / "Snakefile", copy / "Snakefile")
    shapes = copy / "rmi" / "data" / "shapes.py"
    shapes.parent.mkdir(parents=True)
    source = (REPO / "rmi" / "data" / "shapes.py").read_text()
    shapes.write_text(source)
    assert planned_jobs(snakemake(completed_tiny_run, "-n", snakefile=copy / "Snakefile").stdout) == {}
    old, new = f"SHAPES_VERSION = {SHAPES_VERSION} ", f"SHAPES_VERSION = {SHAPES_VERSION + 1} "
    assert source.count(old) == 1
    shapes.write_text(source.replace(old, new))
    jobs = planned_jobs(snakemake(completed_tiny_run, "-n", snakefile=copy / "Snakefile").stdout)
    assert jobs.get("generate_shapes") == 1 and jobs.get("pretrain_backbone") == 1 and jobs.get("train") == 2


def _files(root, skip):
    """``{path: (mtime_ns, bytes)}`` of every file under ``root`` outside ``skip``."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file() and skip not in p.parents}


def test_second_config_has_its_own_results(completed_tiny_run, tmp_path):
    """Another config (own results_dir, another learning rate) in the same working directory plans
    and runs its whole DAG; the first config's results stay up to date and untouched."""
    work, other_dir = completed_tiny_run, "results/other"
    other = changed_config(tmp_path, "train", "lr", 0.001, results_dir=other_dir)
    first = _files(work / TINY_RESULTS, skip=work / other_dir)
    (tmp_path / "empty").mkdir()
    whole_dag = planned_jobs(snakemake(tmp_path / "empty", "-n").stdout)
    assert whole_dag["generate_shapes"] == 1 and whole_dag["train"] == 2

    assert planned_jobs(snakemake(work, "-n", configfile=other).stdout) == whole_dag
    snakemake(work, configfile=other)
    assert list(pd.read_csv(work / other_dir / "table1.csv")["model"]) == list(
        pd.read_csv(work / TINY_RESULTS / "table1.csv")["model"]
    )
    assert planned_jobs(snakemake(work, "-n", configfile=other).stdout) == {}
    assert planned_jobs(snakemake(work, "-n").stdout) == {}
    assert _files(work / TINY_RESULTS, skip=work / other_dir) == first


def test_bad_config_key_is_named(tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"]["stpes"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", configfile=bad, check=False)
    assert proc.returncode != 0 and "stpes" in proc.stdout + proc.stderr


def test_paper_grid_plan_after_a_tiny_run(completed_tiny_run):
    """The paper config's default target and the README's command for it plan the whole grid, also
    in a working directory where another config's results are complete."""
    paper = REPO / "config" / "paper.yaml"
    table = f"{yaml.safe_load(paper.read_text())['results_dir']}/table1.csv"
    assert f"--configfile=config/paper.yaml {table}" in (REPO / "README.md").read_text()
    for target in ([], [table]):
        jobs = planned_jobs(snakemake(completed_tiny_run, "-n", *target, configfile=paper).stdout)
        assert jobs["train"] == 16 and jobs["predict"] == 32 and jobs["densecrf"] == 32 and jobs["evaluate"] == 64
        assert jobs["cache"] == 4 + 8 and jobs["tables"] == 1
        assert ("figures" in jobs) == (not target)


LOCKSTEP = REPO / "config" / "lockstep.yaml"
MODEL_FILES = ("model.pt", "train_log.csv")


def _contents(path):
    """A model's weights, or a training log's step, loss and lr columns."""
    if path.suffix == ".csv":
        return pd.read_csv(path)[["step", "loss", "lr"]]
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_lockstep_plans_one_training_job_per_backbone(tmp_path):
    """The config/lockstep.yaml overlay (train.lockstep: true): one train_lockstep job per backbone
    trains every dataset x fusion of it; nothing else in the DAG changes."""
    tiny = planned_jobs(snakemake(tmp_path, "-n").stdout)
    together = planned_jobs(snakemake(tmp_path, "-n", configfile=[TINY_CONFIG, LOCKSTEP]).stdout)
    assert together.pop("train_lockstep") == 1 and tiny.pop("train") == 2 and together == tiny
    paper = REPO / "config" / "paper.yaml"
    jobs = planned_jobs(snakemake(tmp_path, "-n", configfile=[paper, LOCKSTEP]).stdout)
    assert jobs["train_lockstep"] == 2 and "train" not in jobs and jobs["predict"] == 32


def test_lockstep_refuses_a_trainable_trunk(tmp_path):
    overlay = tmp_path / "trainable.yaml"
    overlay.write_text(yaml.safe_dump({"backbones": {"tiny": {"freeze_trunk": False}}}))
    proc = snakemake(tmp_path, "-n", configfile=[TINY_CONFIG, LOCKSTEP, overlay], check=False)
    assert proc.returncode != 0 and "config: backbones.tiny.freeze_trunk: train.lockstep" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_lockstep_run_writes_the_solo_models(tmp_path):
    """The tiny DAG's models trained by the lockstep job, then by the per-model train jobs (switching the
    overlay off retrains them): the same files, weights and losses equal to 1e-5."""
    files = [f"{TINY_RESULTS}/models/shapes/tiny_{f}/{name}" for f in ("lstm", "rmi") for name in MODEL_FILES]
    snakemake(tmp_path, *files, configfile=[TINY_CONFIG, LOCKSTEP])
    together = {f: _contents(tmp_path / f) for f in files}
    assert planned_jobs(snakemake(tmp_path, "-n", *files).stdout) == {"train": 2}
    snakemake(tmp_path, *files)
    for f in files:
        alone = _contents(tmp_path / f)
        if f.endswith(".csv"):
            pd.testing.assert_frame_equal(together[f], alone, check_exact=False, rtol=1e-5, atol=1e-5)
            continue
        assert together[f].keys() == alone.keys()
        for name, weights in alone.items():
            torch.testing.assert_close(together[f][name], weights, rtol=1e-5, atol=1e-5)
