"""Dispatch a dataset source spec (from the config) to its loader."""

from __future__ import annotations

from pathlib import Path

from rmi.data.records import Expression
from rmi.errors import InputError


def load_split(source: dict, split: str) -> list[Expression]:
    """Records of one split for a source spec.

    ``source`` is ``{"format": "refer", "refer_dir", "split_by", "image_dir",
    "sentence_field"}`` (RefCOCO family and the generated sets) or ``{"format": "referit",
    "query_dir", "image_dir", "mask_dir"}``.
    """
    fmt = source.get("format")
    if fmt == "refer":
        from rmi.data.refer import load_refer

        return load_refer(
            Path(source["refer_dir"]),
            split_by=source["split_by"],
            image_dir=Path(source["image_dir"]),
            split=split,
            sentence_field=source.get("sentence_field", "sent"),
        )
    if fmt == "referit":
        from rmi.data.referit import load_referit

        return load_referit(
            Path(source["query_dir"]) / f"referit_query_{split}.json",
            image_dir=Path(source["image_dir"]),
            mask_dir=Path(source["mask_dir"]),
            split=split,
        )
    raise InputError("config", f"unknown dataset format {fmt!r}")
