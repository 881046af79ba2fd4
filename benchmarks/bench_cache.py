"""Cache build rate and random-access read rate of the Dataset vs decoding the JPEGs with PIL.

    .venv/bin/python benchmarks/bench_cache.py [--images 200] [--size 320] [--workers 2]

Synthetic COCO-like inputs (480 x 640 JPEGs of smooth noise, 3 expressions per image, polygon
masks). Prints: cache build images/s; expressions/s through ``ReferDataset`` batches with a
DataLoader of ``--workers`` workers in random order; the same for the JPEG path (decode +
resize-and-pad + mask decode), which is what training would do without the cache.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rmi.data.cache import build_cache, load_image  # noqa: E402
from rmi.data.dataset import ReferDataset, identity_collate  # noqa: E402
from rmi.data.masks import CocoSegments  # noqa: E402
from rmi.data.records import Expression  # noqa: E402
from rmi.data.transforms import resize_and_pad_image, resize_and_pad_mask  # noqa: E402
from rmi.text import Vocab  # noqa: E402


def make_inputs(root: Path, n_images: int, seed: int = 0) -> list[Expression]:
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n_images):
        h, w = (480, 640) if k % 3 else (640, 427)
        small = rng.integers(0, 255, size=(h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        path = root / f"COCO_train2014_{k:012d}.jpg"
        img.save(path, quality=90)
        for j in range(3):
            cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(20, 100)
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().tolist()
            seg = CocoSegments([[poly]], h, w, where=f"bench ann {k}-{j}", key=f"ann{k}-{j}")
            records.append(Expression(3 * k + j, 3 * k + j, k, path, "the red thing on the left", seg, "train"))
    return records


class JpegDataset(Dataset):
    """The no-cache path: decode, resize-and-pad the image and the mask for every expression."""

    def __init__(self, records, size):
        self.records, self.size = records, size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        rec = self.records[i]
        img = resize_and_pad_image(load_image(rec.image_path), self.size)
        mask = resize_and_pad_mask(rec.mask.decode(), self.size)
        return torch.from_numpy(img), torch.from_numpy(mask)


def rate(loader, n_items: int) -> float:
    t = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch["rows"]) if isinstance(batch, dict) else len(batch[0])
    assert seen == n_items
    return n_items / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = make_inputs(tmp, a.images)
        vocab = Vocab.build(r.sentence for r in records)
        t = time.perf_counter()
        build_cache(records, vocab, tmp / "bench.h5", image_size=a.size, train=True)
        build = a.images / (time.perf_counter() - t)

        ds = ReferDataset(tmp / "bench.h5")
        order = np.random.default_rng(1).permutation(len(ds))
        batches = [order[i : i + a.batch].tolist() for i in range(0, len(order), a.batch)]
        print(f"images: {a.images} ({len(records)} expressions), S={a.size}, batch={a.batch}")
        print(f"cache build: {build:.1f} images/s")
        for workers in sorted({0, a.workers}):
            cached = DataLoader(ds, batch_sampler=batches, collate_fn=identity_collate, num_workers=workers)
            jpeg = DataLoader(JpegDataset(records, a.size), batch_size=a.batch, shuffle=True, num_workers=workers)
            rate(cached, len(ds))  # warm the page cache
            cached_rate, jpeg_rate = rate(cached, len(ds)), rate(jpeg, len(records))
            print(
                f"workers={workers}: HDF5 cache {cached_rate:.0f} expressions/s, "
                f"JPEG decode + resize {jpeg_rate:.0f} expressions/s, speed-up {cached_rate / jpeg_rate:.1f}x"
            )


if __name__ == "__main__":
    main()
