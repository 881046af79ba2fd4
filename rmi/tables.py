"""The paper's tables from the per-expression metric CSVs (pure aggregation, nothing recomputed).

Inputs: ``metrics {dataset: {split: {model: csv path}}}`` (``rules/common.smk``
``metric_files()``; the CSVs have the columns ``rmi.metrics.COLUMNS``), model =
``{backbone}_{fusion}`` or ``{backbone}_{fusion}_dcrf``; the spec of ``rules/common.smk``
``table_spec()``: ``datasets {name: [splits]}``, ``backbones [[name, letter], ...]`` (config order; a
``{name: letter}`` dict works too), ``fusions``,
``dcrf``, ``length {table: {dataset, split, buckets}}``, ``paper`` (published Table 1 or null),
``thresholds``, ``coco_datasets`` (the datasets whose images are COCO images).

Outputs (``out_dir``): ``table1.csv``/``.md`` (overall IoU x 100 per model row and
``{dataset} {split}`` column), ``precision.csv`` (overall/mean IoU and prec@X per model and
split, x 100), one ``{table}.csv`` per length table (overall IoU x 100 per length bucket for
``+LSTM`` and ``+RMI``, the relative gain in percent as in the paper, and the bucket sizes), and
``table1_vs_paper.csv`` when the paper's values are given (with a ``note`` where the comparison
needs one: ``PRETRAINING_NOTES``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rmi.errors import InputError
from rmi.fileio import write_text
from rmi.metrics import COLUMNS, overall_iou, summarize

FUSION_NAMES = {"lstm": "LSTM", "rmi": "RMI"}

#: Backbones whose pretraining saw the evaluation images of the COCO-image datasets (RefCOCO,
#: RefCOCO+, RefCOCOg: COCO train2014 images, all of them in COCO train2017).
PRETRAINING_NOTES = {
    "deeplab101": (
        "D backbone (torchvision DeepLabV3-ResNet101, COCO_WITH_VOC_LABELS_V1) was trained on COCO train2017, "
        "which contains this split's images"
    ),
}

#: ``{dataset: {split: {model: path}}}``: the per-expression metric CSVs
MetricFiles = dict[str, dict[str, dict[str, "str | Path"]]]


def read_metrics(metrics: MetricFiles, dataset: str, model: str, split: str) -> pd.DataFrame:
    """The per-expression metrics of one model and split (an ``InputError`` if missing/malformed)."""
    try:
        path = Path(metrics[dataset][split][model])
    except KeyError:
        raise InputError("metrics", f"no file given for {dataset} {split} {model}") from None
    if not path.is_file():
        raise InputError(path, "metrics file is missing")
    frame = pd.read_csv(path)
    if list(frame.columns) != COLUMNS:
        raise InputError(path, f"columns {list(frame.columns)} differ from {COLUMNS}")
    return frame


def model_rows(spec: dict) -> list[tuple[str, str]]:
    """``(row label, model)`` in the paper's order: per backbone, fusions, then their +DCRF."""
    return [(label, model) for label, model, _ in _rows(spec)]


def _rows(spec: dict) -> list[tuple[str, str, str]]:
    """``(row label, model, backbone)`` in the order of ``model_rows``."""
    rows = []
    for backbone, letter in dict(spec["backbones"]).items():
        for suffix, tag in [("", "")] + ([("_dcrf", "+DCRF")] if spec["dcrf"] else []):
            for fusion in spec["fusions"]:
                rows.append((f"{letter}+{FUSION_NAMES[fusion]}{tag}", f"{backbone}_{fusion}{suffix}", backbone))
    return rows


def columns(spec: dict) -> list[tuple[str, str, str]]:
    """``(column label, dataset, split)`` in config order."""
    return [(f"{d} {s}", d, s) for d, splits in spec["datasets"].items() for s in splits]


def table1(spec: dict, metrics: MetricFiles) -> pd.DataFrame:
    """Overall IoU x 100 (two decimals): one row per model, one column per ``{dataset} {split}``."""
    data = {
        label: [round(100 * overall_iou(read_metrics(metrics, d, model, s)), 2) for _, d, s in columns(spec)]
        for label, model in model_rows(spec)
    }
    frame = pd.DataFrame.from_dict(data, orient="index", columns=[c for c, _, _ in columns(spec)])
    return frame.rename_axis("model").reset_index()


def precision_table(spec: dict, metrics: MetricFiles) -> pd.DataFrame:
    """``model, dataset, split, n, oIoU, mIoU, prec@X...`` (x 100, two decimals) for every model and split."""
    records = []
    for label, model in model_rows(spec):
        for _, d, s in columns(spec):
            summary = summarize(read_metrics(metrics, d, model, s), spec["thresholds"])
            row = {
                "model": label,
                "dataset": d,
                "split": s,
                "n": summary["n"],
                "oIoU": summary["overall_iou"],
                "mIoU": summary["mean_iou"],
            }
            row.update({f"prec@{t}": summary[f"prec@{t}"] for t in spec["thresholds"]})
            records.append(row)
    frame = pd.DataFrame.from_records(records)
    value_cols = [c for c in frame.columns if c not in ("model", "dataset", "split", "n")]
    frame[value_cols] = (100 * frame[value_cols]).round(2)
    return frame


def bucket_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def length_table(spec: dict, metrics: MetricFiles, table: dict) -> pd.DataFrame:
    """Overall IoU x 100 by expression length (tokens) for ``+LSTM`` vs ``+RMI`` (paper Tables 2-5).

    Rows per backbone: ``{L}+LSTM``, ``{L}+RMI``, ``{L} Relative Gain (%)`` = (RMI - LSTM) / LSTM
    x 100 (when both fusions run), then ``n`` (expressions per bucket). Buckets are inclusive
    ``[lo, hi]`` ranges of ``n_tokens``.
    """
    buckets = [tuple(b) for b in table["buckets"]]
    labels = [bucket_label(lo, hi) for lo, hi in buckets]
    rows, sizes = {}, None
    for backbone, letter in dict(spec["backbones"]).items():
        values = {}
        for fusion in spec["fusions"]:
            frame = read_metrics(metrics, table["dataset"], f"{backbone}_{fusion}", table["split"])
            parts = [frame[frame["n_tokens"].between(lo, hi)] for lo, hi in buckets]
            values[fusion] = [100 * overall_iou(p) if len(p) else float("nan") for p in parts]
            rows[f"{letter}+{FUSION_NAMES[fusion]}"] = [round(v, 2) for v in values[fusion]]
            sizes = [len(p) for p in parts]
        if {"lstm", "rmi"} <= set(values):
            rows[f"{letter} Relative Gain (%)"] = [
                round(100 * (r - b) / b, 2) if b else float("nan")
                for b, r in zip(values["lstm"], values["rmi"], strict=True)
            ]
    rows["n"] = sizes
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=labels)
    return frame.rename_axis("Length").reset_index()


def vs_paper(table: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """``model, column, ours, paper, diff, note`` for every cell of Table 1 the paper (``spec["paper"]``)
    reports; ``note`` is the backbone's ``PRETRAINING_NOTES`` entry on the columns of ``spec["coco_datasets"]``."""
    backbone_of = {label: backbone for label, _, backbone in _rows(spec)}
    dataset_of = {label: dataset for label, dataset, _ in columns(spec)}
    coco = set(spec["coco_datasets"])
    records = []
    ours = table.set_index("model")
    for model, cols in spec["paper"].items():
        for col, value in cols.items():
            if model in ours.index and col in ours.columns:
                mine = float(ours.loc[model, col])
                note = PRETRAINING_NOTES.get(backbone_of[model], "") if dataset_of[col] in coco else ""
                records.append(
                    {
                        "model": model,
                        "column": col,
                        "ours": mine,
                        "paper": value,
                        "diff": round(mine - value, 2),
                        "note": note,
                    }
                )
    return pd.DataFrame.from_records(records, columns=["model", "column", "ours", "paper", "diff", "note"])


def write_tables(spec: dict, metrics: MetricFiles, out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write every table of the spec into ``out_dir`` (atomically); return them by file name."""
    out_dir = Path(out_dir)
    t1 = table1(spec, metrics)
    tables = {"table1.csv": t1, "precision.csv": precision_table(spec, metrics)}
    for name, table in spec["length"].items():
        tables[f"{name}.csv"] = length_table(spec, metrics, table)
    if spec["paper"]:
        tables["table1_vs_paper.csv"] = vs_paper(t1, spec)
    for name, frame in tables.items():
        write_text(out_dir / name, frame.to_csv(index=False))
    title = "Table 1: overall IoU (x100) per model and split\n\n"
    write_text(out_dir / "table1.md", title + t1.to_markdown(index=False, floatfmt=".2f") + "\n")
    return tables
