"""Optimised mLSTM (visual+spatial gate term once per image) vs the naive full 1x1 conv per step.

    .venv/bin/python benchmarks/bench_mlstm.py [--size 40] [--steps 20] [--repeats 3] [--threads 2] [--device cuda]
        [--out benchmarks/results/mlstm_cpu.jsonl]

Paper sizes by default: 40 x 40 cells, T = 20 words, 500 mLSTM units, per-pixel input
1000 (visual) + 1000 (word) + 1000 (word-LSTM state) + 8 (spatial) = 3008, plus 500 recurrent;
batch 1, float32 on the CPU (or ``--device``; CUDA timings synchronise the device). Prints the
median of ``--repeats`` runs of the forward (no_grad) and of forward+backward (gradient of the
last hidden state's sum), in ms, and naive/optimised ratios; ``--out`` appends them as one JSON line
with the machine (CPU model or GPU name, threads, torch version, load average, date).
The naive reference lives in ``tests/reference_mlstm.py`` (not part of the library).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from reference_mlstm import naive_mlstm  # noqa: E402
from rmi.models.rmi import MultimodalLSTM  # noqa: E402


def median_ms(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up), in ms."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40, help="feature map side (paper: 40)")
    parser.add_argument("--steps", type=int, default=20, help="words T (paper: 20)")
    parser.add_argument("--units", type=int, default=500, help="mLSTM units n (paper: 500)")
    parser.add_argument("--dim", type=int, default=1000, help="visual = embedding = word-LSTM dim (paper: 1000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    mlstm = MultimodalLSTM(args.dim, 2 * args.dim, args.units).to(device)
    visual = torch.randn(1, args.dim, args.size, args.size, device=device, requires_grad=True)
    words = torch.randn(1, args.steps, 2 * args.dim, device=device, requires_grad=True)
    valid = torch.ones(1, args.steps, dtype=torch.bool, device=device)
    image_of = torch.zeros(1, dtype=torch.long, device=device)

    def optimised() -> torch.Tensor:
        *_, h = mlstm.steps(visual, image_of, words, valid)
        return h

    def naive() -> torch.Tensor:
        return naive_mlstm(mlstm.weight, mlstm.bias, visual, words, valid)[-1]

    def backward(fn):
        return lambda: fn().sum().backward()

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()

        return run

    with torch.no_grad():
        diff = (optimised() - naive()).abs().max().item()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{args.threads} threads"
    print(
        f"mLSTM {args.size}x{args.size}, T={args.steps}, n={args.units}, input {3 * args.dim + 8}+{args.units}, "
        f"batch 1, {device} ({where}), load average {os.getloadavg()[0]:.2f}; max |diff| {diff:.1e}"
    )
    line = {
        "bench": "mlstm",
        **{k: getattr(args, k) for k in ("size", "steps", "units", "dim", "repeats", "threads", "device")},
        "machine": where if device.type == "cuda" else f"{cpu_model()}, {args.threads} threads",
        "torch": torch.__version__,
        "load_average": round(os.getloadavg()[0], 2),
        "date": datetime.date.today().isoformat(),
    }
    for label, wrap in (("forward", no_grad), ("forward+backward", backward)):
        fast, slow = median_ms(wrap(optimised), args.repeats, device), median_ms(wrap(naive), args.repeats, device)
        print(f"{label:17s} optimised {fast:8.1f} ms   naive {slow:8.1f} ms   ratio {slow / fast:5.2f}x")
        line[label] = {"optimised_ms": round(fast, 1), "naive_ms": round(slow, 1), "ratio": round(slow / fast, 2)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
