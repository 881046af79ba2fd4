"""What each trunk-pretraining task leaves the referring model: the demo's pipeline with its ``tiny``
trunk pretrained as D is (``dense``), or as R is (``classify``: image-level labels, average or max
pooling), or on object-centric crops (``objects``: each object's category and colour, as ImageNet's
photos of one object each), then frozen; T+RMI's overall IoU on ``shapes`` val for each.

    .venv/bin/python benchmarks/bench_pretrain_task.py [--variants dense classify:avg classify:max objects] \\
        [--cores 2] [--work results_bench/pretrain_task] [--out benchmarks/results/pretrain_task_cpu.jsonl]

R (``resnet101`` in ``config/gpu.yaml``) is pretrained on image-level labels and scores far below D
on a GPU; this reproduces the comparison on a CPU in minutes, on the trunk and sizes of
``config/config.yaml``, with nothing else changed. Each variant is one ``snakemake`` call on that
config with ``backbones.tiny.pretrain.task`` / ``pooling`` set, all in one ``results_dir`` (``--work``):
the generated data and caches are made once, then each variant reruns the pretraining and what
depends on it. One JSON line per variant: the variant, the pretraining's summary line (task, loss,
label or pixel accuracy), overall and mean IoU, prec@0.5, the DAG's wall seconds.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def variant_config(base: dict, variant: str, work: str) -> dict:
    """``config/config.yaml`` with the tiny trunk's pretraining task (and pooling) of ``variant``
    (``dense``, ``classify:avg``, ``classify:max``, ``objects``) and every output under ``work``; the
    dense task keeps the config's ``extent`` head, the others have none."""
    task, _, pooling = variant.partition(":")
    pretrain = {**base["backbones"]["tiny"]["pretrain"], "task": task}
    if task != "dense":
        pretrain.pop("extent", None)
    if pooling:
        pretrain["pooling"] = pooling
    tiny = {**base["backbones"]["tiny"], "pretrain": pretrain}
    return {**base, "results_dir": work, "backbones": {"tiny": tiny}, "fusions": ["rmi"]}


def pretrain_summary(log: Path) -> dict:
    """The summary dict that ``rmi.pretrain.pretrain_trunk`` logs last (``... -> path: {...}``)."""
    line = [row for row in log.read_text().splitlines() if "pretrained tiny trunk" in row][-1]
    return ast.literal_eval(line[line.index("{") :])


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the machine type."""
    info = Path("/proc/cpuinfo")
    names = [r.split(":", 1)[1].strip() for r in info.read_text().splitlines() if r.startswith("model name")]
    return names[0] if names else platform.machine()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["dense", "classify:avg", "classify:max", "objects"])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--work", default="results_bench/pretrain_task", help="results_dir of the runs (relative)")
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines to this file")
    a = p.parse_args()
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    work = ROOT / a.work
    snakemake = Path(sys.executable).with_name("snakemake")
    target = work / "metrics" / "shapes" / "tiny_rmi" / "val.json"
    work.mkdir(parents=True, exist_ok=True)
    for variant in a.variants:
        configfile = work / f"config_{variant.replace(':', '_')}.yaml"  # kept beside the run it made
        configfile.write_text(yaml.safe_dump(variant_config(base, variant, a.work)))
        start = time.perf_counter()
        subprocess.run(
            [
                str(snakemake),
                str(target.relative_to(ROOT)),
                "--cores",
                str(a.cores),
                f"--configfile={configfile}",
                "--quiet",
                "rules",
            ],
            cwd=ROOT,
            check=True,
        )
        seconds = time.perf_counter() - start
        metrics = json.loads(target.read_text())
        row = {
            "bench": "pretrain_task",
            "variant": variant,
            "pretrain": pretrain_summary(work / "logs" / "pretrain_backbone" / "tiny.log"),
            "overall_iou": round(100 * metrics["overall_iou"], 2),
            "mean_iou": round(100 * metrics["mean_iou"], 2),
            "prec@0.5": round(100 * metrics["prec@0.5"], 2),
            "seconds": round(seconds, 1),
            "cpu": cpu_name(),
            "cores": a.cores,
        }
        print(json.dumps(row), flush=True)
        if a.out:
            with a.out.open("a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
