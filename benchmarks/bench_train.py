"""Training step time and expressions/s: the tiny demo model and resnet101+RMI at 320 x 320.

    .venv/bin/python benchmarks/bench_train.py [--steps 12] [--r-steps 4] [--threads 2] [--device cuda]

Runs the real training loop (``rmi.train.run``: DataLoader over the HDF5 cache, model, loss,
Adam) on a generated ``shapes`` dataset, once with per-image grouped batches (the frozen trunk
runs once per image of the batch) and once with expressions shuffled independently. Prints the
median step time after warm-up, expressions/s, mean distinct images per batch, the FLOPs of one
training step (``torch.utils.flop_counter``) and, on CUDA, the model FLOPs utilisation against
the GPU's dense bf16 peak (``--peak-tflops``, H100 SXM: 989).
resnet101 uses random weights (``pretrained: false``): the timing does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from builders import build_shapes_caches  # noqa: E402
from rmi.data.dataset import ReferDataset, StepBatchSampler  # noqa: E402
from rmi.device import model_inputs, select_device  # noqa: E402
from rmi.text import Vocab  # noqa: E402
from rmi.train import TrainJob, _build, loss_fn, run  # noqa: E402

SETUPS = {
    # name: (backbone, fusion, image size, model dims, batch size, frozen trunk); the demo's
    # tiny trunk has widths TINY_DEMO_WIDTHS (config/config.yaml)
    "tiny+rmi (demo)": ("tiny", "rmi", 96, 64, 16, False),
    "tiny+lstm (demo)": ("tiny", "lstm", 96, 64, 16, False),
    "resnet101+rmi @320": ("resnet101", "rmi", 320, None, 8, True),
}
TINY_DEMO_WIDTHS = [16, 32, 64]
PAPER_DIMS = {"visual_dim": 1000, "embed_dim": 1000, "lstm_dim": 1000, "mlstm_dim": 500, "mlp_dim": 500}


def hparams(backbone, fusion, size, dim, batch, frozen, steps, grouped) -> dict:
    dims = PAPER_DIMS if dim is None else {k: dim for k in PAPER_DIMS}
    return {
        "seed": 0,
        "image_size": size,
        "backbone": backbone,
        "fusion": fusion,
        "backbone_cfg": {
            "pretrained": False,
            "freeze_trunk": frozen,
            "weights_path": None,
            **({"widths": TINY_DEMO_WIDTHS} if backbone == "tiny" else {}),
        },
        "model": dims,
        "train": {
            "steps": steps,
            "batch_size": batch,
            "lr": 2.5e-4,
            "lr_end": 1e-5,
            "lr_power": 0.9,
            "weight_decay": 5e-4,
            "bias_lr_mult": 1.0,
            "group_by_image": grouped,
            "length_buckets": False,
            "loss_reduction": "sum",
            "amp": True,
        },
    }


def step_flops(hp: dict, caches: dict, device: torch.device) -> float:
    """FLOPs of one forward+backward training step on the first batch."""
    vocab = Vocab.load(caches["vocab"])
    job = TrainJob(
        cache=caches["train"],
        vocab=caches["vocab"],
        hparams=hp,
        out_model=Path("-"),
        out_log=Path("-"),
        checkpoint_dir=Path("-"),
    )
    model, _, _ = _build(job, vocab, device)
    dataset = ReferDataset(caches["train"])
    rows = next(
        iter(StepBatchSampler(dataset.cache.image_index, hp["train"]["batch_size"], 0, hp["train"]["group_by_image"]))
    )
    batch = dataset.__getitems__(rows)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(**model_inputs(batch, device)), batch["target"].to(device)).backward()
    return float(counter.get_total_flops())


def images_per_batch(caches: dict, batch: int, grouped: bool, n: int = 50) -> float:
    cache = ReferDataset(caches["train"], with_targets=False).cache
    it = iter(StepBatchSampler(cache.image_index, batch, 0, grouped))
    return statistics.mean(len(np.unique(cache.image_index[next(it)])) for _ in range(n))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="steps per tiny run (first 2 are warm-up)")
    p.add_argument("--r-steps", type=int, default=4, help="steps per resnet101 run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(SETUPS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = select_device(a.device)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{a.threads} CPU threads'})")
    with tempfile.TemporaryDirectory() as tmp:
        data = {}
        for name, (backbone, fusion, size, dim, batch, frozen) in SETUPS.items():
            if a.only and name not in a.only.split(","):
                continue
            if size not in data:
                data[size] = build_shapes_caches(Path(tmp) / f"s{size}", {"train": 60}, image_size=size)
            caches = data[size]
            steps = a.r_steps if backbone != "tiny" else a.steps
            for grouped in (True, False):
                hp = hparams(backbone, fusion, size, dim, batch, frozen, steps, grouped)
                out = Path(tmp) / f"{backbone}-{fusion}-{grouped}"
                run(
                    TrainJob(
                        cache=caches["train"],
                        vocab=caches["vocab"],
                        hparams=hp,
                        out_model=out / "model.pt",
                        out_log=out / "log.csv",
                        checkpoint_dir=out / "ckpt",
                        threads=a.threads,
                        device=str(device),
                        log_every=1,
                        progress=False,
                    )
                )
                t = pd.read_csv(out / "log.csv")["time"].to_numpy()
                step_s = statistics.median(np.diff(t)[1:]) if len(t) > 2 else t[-1]
                flops = step_flops(hp, caches, device)
                line = {
                    "setup": name,
                    "grouped": grouped,
                    "batch": batch,
                    "images/batch": round(images_per_batch(caches, batch, grouped), 2),
                    "step_ms": round(1000 * step_s, 1),
                    "expr/s": round(batch / step_s, 1),
                    "GFLOP/step": round(flops / 1e9, 1),
                    "TFLOP/s": round(flops / step_s / 1e12, 3),
                }
                if device.type == "cuda":
                    line["MFU%"] = round(100 * flops / step_s / 1e12 / a.peak_tflops, 2)
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
