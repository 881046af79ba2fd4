"""Tables are pure aggregation of the per-expression metric CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rmi.errors import InputError
from rmi.tables import write_tables

SPEC = {
    "datasets": {"unc": ["val", "testA"], "referit": ["test"]},
    "backbones": {"resnet101": "R", "deeplab101": "D"},
    "fusions": ["lstm", "rmi"],
    "dcrf": True,
    "length": {"table5": {"dataset": "referit", "split": "test", "buckets": [[1, 1], [2, 2], [3, 4], [5, 20]]}},
    "paper": {"R+RMI": {"unc val": 39.74, "referit test": 54.55}, "D+LSTM+DCRF": {"unc testA": 44.25}},
    "thresholds": [0.5, 0.9],
    "coco_datasets": ["unc"],
}
MODELS = [f"{b}_{f}{s}" for b in ("resnet101", "deeplab101") for s in ("", "_dcrf") for f in ("lstm", "rmi")]


@pytest.fixture
def metrics_dir(tmp_path, rng):
    root = tmp_path / "metrics"
    for dataset, splits in SPEC["datasets"].items():
        for split in splits:
            for model in MODELS:
                n = 40
                union = rng.integers(50, 500, n)
                inter = (union * rng.uniform(0, 1, n)).astype(int)
                frame = pd.DataFrame(
                    {
                        "sent_id": np.arange(n),
                        "ref_id": np.arange(n) // 2,
                        "n_tokens": rng.integers(1, 12, n),
                        "intersection": inter,
                        "union": union,
                        "iou": inter / union,
                    }
                )
                (root / dataset / model).mkdir(parents=True, exist_ok=True)
                frame.to_csv(root / dataset / model / f"{split}.csv", index=False)
    return root


def files(metrics_dir):
    """The metrics mapping the tables rule passes: ``{dataset: {split: {model: csv}}}``."""
    return {
        d: {s: {m: str(metrics_dir / d / m / f"{s}.csv") for m in MODELS} for s in splits}
        for d, splits in SPEC["datasets"].items()
    }


def read(metrics_dir, dataset, model, split):
    return pd.read_csv(metrics_dir / dataset / model / f"{split}.csv")


def test_table1_recomputes_from_csvs(metrics_dir, tmp_path):
    write_tables(SPEC, files(metrics_dir), tmp_path / "out")
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert list(t1.columns) == ["model", "unc val", "unc testA", "referit test"]
    assert list(t1["model"]) == [
        "R+LSTM",
        "R+RMI",
        "R+LSTM+DCRF",
        "R+RMI+DCRF",
        "D+LSTM",
        "D+RMI",
        "D+LSTM+DCRF",
        "D+RMI+DCRF",
    ]
    rows = dict(zip(t1["model"], MODELS, strict=True))
    for _, row in t1.iterrows():
        for col in t1.columns[1:]:
            dataset, split = col.split()
            m = read(metrics_dir, dataset, rows[row["model"]], split)
            assert row[col] == pytest.approx(round(100 * m["intersection"].sum() / m["union"].sum(), 2))
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| R+RMI+DCRF" in md and f"{t1.loc[1, 'unc val']:.2f}" in md


def test_precision_table(metrics_dir, tmp_path):
    write_tables(SPEC, files(metrics_dir), tmp_path)
    p = pd.read_csv(tmp_path / "precision.csv")
    assert list(p.columns) == ["model", "dataset", "split", "n", "oIoU", "mIoU", "prec@0.5", "prec@0.9"]
    assert len(p) == 8 * 3
    row = p[(p["model"] == "D+RMI") & (p["split"] == "testA")].iloc[0]
    m = read(metrics_dir, "unc", "deeplab101_rmi", "testA")
    assert row["mIoU"] == pytest.approx(round(100 * m["iou"].mean(), 2))
    assert row["prec@0.5"] == pytest.approx(round(100 * (m["iou"] >= 0.5).mean(), 2))


def test_length_table_buckets_and_relative_gain(metrics_dir, tmp_path):
    write_tables(SPEC, files(metrics_dir), tmp_path)
    t = pd.read_csv(tmp_path / "table5.csv").set_index("Length")
    assert list(t.columns) == ["1", "2", "3-4", "5-20"]
    assert list(t.index) == ["R+LSTM", "R+RMI", "R Relative Gain (%)", "D+LSTM", "D+RMI", "D Relative Gain (%)", "n"]
    m = read(metrics_dir, "referit", "resnet101_rmi", "test")
    part = m[(m["n_tokens"] >= 3) & (m["n_tokens"] <= 4)]  # inclusive bounds
    assert t.loc["R+RMI", "3-4"] == pytest.approx(round(100 * part["intersection"].sum() / part["union"].sum(), 2))
    lstm = read(metrics_dir, "referit", "resnet101_lstm", "test")
    lp = lstm[lstm["n_tokens"] == 1]
    rp = m[m["n_tokens"] == 1]
    li, ri = lp["intersection"].sum() / lp["union"].sum(), rp["intersection"].sum() / rp["union"].sum()
    assert t.loc["R Relative Gain (%)", "1"] == pytest.approx(round(100 * (ri - li) / li, 2))
    assert t.loc["n"].sum() == len(m)


def test_vs_paper(metrics_dir, tmp_path):
    tables = write_tables(SPEC, files(metrics_dir), tmp_path)
    v = pd.read_csv(tmp_path / "table1_vs_paper.csv")
    assert list(v.columns) == ["model", "column", "ours", "paper", "diff", "note"] and len(v) == 3
    ours = tables["table1.csv"].set_index("model").loc["R+RMI", "unc val"]
    row = v[(v["model"] == "R+RMI") & (v["column"] == "unc val")].iloc[0]
    assert row["ours"] == ours and row["diff"] == pytest.approx(round(ours - 39.74, 2))


def test_missing_metrics_file_is_named(metrics_dir, tmp_path):
    (metrics_dir / "unc" / "deeplab101_rmi_dcrf" / "val.csv").unlink()
    with pytest.raises(InputError, match="deeplab101_rmi_dcrf/val.csv: metrics file is missing"):
        write_tables(SPEC, files(metrics_dir), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_vs_paper_notes_coco_pretraining_on_coco_datasets(metrics_dir, tmp_path):
    write_tables(SPEC, files(metrics_dir), tmp_path)
    v = pd.read_csv(tmp_path / "table1_vs_paper.csv", keep_default_na=False).set_index(["model", "column"])
    # D on a COCO-image dataset: torchvision's DeepLabV3 saw those images; R rows and ReferIt have no note
    assert "COCO train2017" in v.loc[("D+LSTM+DCRF", "unc testA"), "note"]
    assert v.loc[("R+RMI", "unc val"), "note"] == "" and v.loc[("R+RMI", "referit test"), "note"] == ""
    spec = {**SPEC, "paper": {"D+RMI": {"referit test": 57.34}}}
    write_tables(spec, files(metrics_dir), tmp_path / "referit")
    assert pd.read_csv(tmp_path / "referit" / "table1_vs_paper.csv", keep_default_na=False)["note"].tolist() == [""]


def test_metrics_not_given_is_named(metrics_dir, tmp_path):
    given = files(metrics_dir)
    del given["unc"]["testA"]["resnet101_lstm"]
    with pytest.raises(InputError, match="no file given for unc testA resnet101_lstm"):
        write_tables(SPEC, given, tmp_path / "out")
