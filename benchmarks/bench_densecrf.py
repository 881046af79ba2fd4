"""DenseCRF throughput of ``rmi.crf.refine_file`` at 320 x 320: masks/s with 1 and 2 processes.

    .venv/bin/python benchmarks/bench_densecrf.py [--n 32] [--size 320] [--threads 1 2]

Builds a cache of ``--n`` generated expressions at ``--size`` and a logits prediction file of
smooth random logits, then times ``refine_file`` (the densecrf rule's work) for each thread count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from builders import build_shapes_caches  # noqa: E402
from rmi.crf import CRFParams, refine_file  # noqa: E402
from rmi.data.cache import CacheReader  # noqa: E402
from rmi.prediction_file import write_predictions  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32, help="expressions (at least)")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caches = build_shapes_caches(tmp, {"train": 4, "val": max(2, a.n // 3)}, image_size=a.size)
        cache = CacheReader(caches["val"])
        n, cells = len(cache), a.size // 8
        rng = np.random.default_rng(0)
        logits = rng.normal(0, 3, (n, cells, cells)).astype(np.float32)
        write_predictions(tmp / "p.h5", cache.sent_id, cache.image_hw[cache.image_index], a.size, logits=logits)
        for threads in a.threads:
            t = time.perf_counter()
            refine_file(tmp / "p.h5", caches["val"], tmp / f"crf{threads}.h5", CRFParams(), threads=threads)
            dt = time.perf_counter() - t
            print(
                f"{a.size}x{a.size}, {n} masks, {threads} process(es): {dt:.2f} s, {n / dt:.2f} masks/s, "
                f"{dt / n:.3f} s/mask",
                flush=True,
            )


if __name__ == "__main__":
    main()
