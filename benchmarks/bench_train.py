"""Training-step rate of the paper model, eager vs CUDA graphs, and predict throughput by batch size.

    python benchmarks/bench_train.py --device cuda [--fusions rmi,lstm] [--cases b1-] [--out bench.jsonl]
    python benchmarks/bench_train.py --summarize bench.jsonl
    python benchmarks/bench_train.py --device cuda --cases "" --lockstep 1,2,4,8 [--lockstep-loop-steps 300]
    python benchmarks/bench_train.py --device cpu --backbone tiny --size 64 --dims 16 --images 12 \\
        --batches 3 --repeats 1 --loop-steps 20 --predict-cap 4          # smoke run on a CPU

Model: ``--backbone`` (resnet101, frozen trunk, random weights written once to a weights file that
every training loads) + RMI or
LSTM head at ``--size`` (paper: 320), dims and training settings of ``config/paper.yaml``, on the
batches of a generated ``shapes`` cache (``StepBatchSampler``, grouped by image). Each case (``CASES``: batch
size, precision, trunk or cached trunk features, eager ``EagerStep`` or ``GraphedStep``) runs
``--batches`` batches once (warm-up: CUDA graphs are captured then), then ``--repeats`` timed
passes over the same batches; a step is the batch's host-to-device copy, forward, loss,
backward, Adam and the scheduler (data loading excluded: ``loop-*`` cases time the whole
``rmi.train.run`` loop, DataLoader over the HDF5 cache included, from its log).

Precisions: ``default`` = PyTorch's defaults, today's path (convs TF32, matmuls IEEE fp32),
``fp32`` = IEEE everywhere (TF32 off), ``tf32`` = TF32 on, ``bf16`` = bf16 autocast (TF32 on).
One JSON line per case: step ms, steps/s, expressions/s, GFLOP/step (``torch.utils.flop_counter``:
matmuls and convs, forward and backward, counted on the meta device), TFLOP/s, MFU against the
card's dense peak for the precision (``PEAK_TFLOPS``; the tf32 peak for ``default``) and, at
batch 1, the hours of one paper training (750k steps). ``predict`` lines: forward throughput
(no grad) at batch 1, 2, 4, ... up to ``--predict-cap`` expressions or the first out-of-memory,
every expression 20 words long (the worst case), ``--expr-per-image`` expressions per image.
``--summarize`` prints the tables, speed-ups and the paper grid's wall time on one GPU.

Lockstep (``--lockstep K,...``, ``rmi.lockstep``): K trainings take their steps together in
``config/paper.yaml``'s setting (``LOCKSTEP_CASE``: batch 1 in uniform order, TF32, CUDA graphs, the
trunk run); member ``i`` trains fusion ``i mod F`` on generated dataset ``i // F`` (of
``--lockstep-datasets``, each its own words and lengths), so K = 8 is one backbone's group of the
paper grid. In the same run, first each fusion alone on dataset 0's batches (``lockstep-solo``);
then per K the rate in all (member steps/s), the speed-up over those solo steps (for the members'
mix of fusions), the paper grid's hours at that rate (16 x 750k steps) and the peak memory; with
``--lockstep-loop-steps`` also the real loops (``rmi.train.run`` per fusion, ``rmi.lockstep.run``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torchvision
import yaml
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from builders import build_shapes_caches, train_job  # noqa: E402
from rmi.data.dataset import ReferDataset, StepBatchSampler  # noqa: E402
from rmi.data.lockstep import stack_batches  # noqa: E402
from rmi.device import autocast, select_device, tf32  # noqa: E402
from rmi.lockstep import LockstepJob, member_losses  # noqa: E402
from rmi.lockstep import run as run_lockstep  # noqa: E402
from rmi.models.backbones import dilated_resnet101, resnet_trunk, tiny_body  # noqa: E402
from rmi.models.lockstep import LockstepSegmenter  # noqa: E402
from rmi.models.segmenter import first_word_column  # noqa: E402
from rmi.text import Vocab  # noqa: E402
from rmi.train import TrainSpec, build, loss_fn, make_optimizer, run  # noqa: E402
from rmi.train_step import make_step  # noqa: E402

PAPER = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
PAPER_STEPS = PAPER["train"]["steps"]  # 750k at batch 1: the official main.py -i 750000
#: expressions of the evaluation splits of config/paper.yaml (refer toolkit statistics; ReferIt's test query file)
EVAL_EXPRESSIONS = {
    ("unc", "val"): 10834,
    ("unc", "testA"): 5657,
    ("unc", "testB"): 5095,
    ("unc+", "val"): 10758,
    ("unc+", "testA"): 5726,
    ("unc+", "testB"): 4889,
    ("gref", "val"): 9536,
    ("referit", "test"): 60105,
}
#: dense peak TFLOP/s by device-name fragment (first match wins): fp32 CUDA cores, tf32 and bf16 tensor cores
PEAK_TFLOPS = [
    ("H100 PCIe", {"fp32": 51, "tf32": 378, "bf16": 756}),
    ("H100", {"fp32": 67, "tf32": 495, "bf16": 989}),  # SXM
    ("H200", {"fp32": 67, "tf32": 495, "bf16": 989}),
    ("A100", {"fp32": 19.5, "tf32": 156, "bf16": 312}),
]
#: precision -> (bf16 autocast, TF32 flag for rmi.device.tf32, peak used for the MFU)
PRECISIONS = {
    "default": (False, None, "tf32"),
    "fp32": (False, False, "fp32"),
    "tf32": (False, True, "tf32"),
    "bf16": (True, True, "bf16"),
}


@dataclass(frozen=True)
class Case:
    batch: int
    precision: str
    graphs: bool
    features: bool = False  # cached trunk features (rule extract_features) instead of images

    @property
    def name(self) -> str:
        source = "-features" if self.features else ""
        return f"b{self.batch}-{self.precision}{source}-{'graphs' if self.graphs else 'eager'}"


CASES = [
    Case(1, "default", False),  # today's path
    Case(1, "fp32", False),
    Case(1, "fp32", True),
    Case(1, "tf32", False),
    Case(1, "tf32", True),
    Case(1, "tf32", False, features=True),
    Case(1, "tf32", True, features=True),
    Case(8, "bf16", False),
    Case(8, "bf16", True),
]
LOOP_CASES = [Case(1, "default", False), Case(1, "tf32", True)]


def hparams(args, fusion: str, case: Case, steps: int) -> dict:
    """The ``hparams`` of ``config/paper.yaml`` (as ``rules/common.smk`` builds them) for one case."""
    amp, tf32_flag, _ = PRECISIONS[case.precision]
    defaults = {k: v["default"] for k, v in SCHEMA["properties"]["train"]["properties"].items() if "default" in v}
    train = {**defaults, **PAPER["train"]}  # as validate(), less what rules/common.smk leaves out of hparams
    train = {k: v for k, v in train.items() if k not in ("checkpoint_every", "lockstep")}
    train.update(steps=steps, batch_size=case.batch, amp=amp, cuda_graphs=case.graphs, tf32=tf32_flag)
    if tf32_flag is None:
        del train["tf32"]
    dims = PAPER["model"] if args.dims == "paper" else {k: int(args.dims) for k in PAPER["model"]}
    return {
        "seed": 0,
        "image_size": args.size,
        "backbone": args.backbone,
        "fusion": fusion,
        "backbone_cfg": {"pretrained": False, "freeze_trunk": True, "weights_path": args.trunk_weights},
        "model": dims,
        "train": train,
    }


def random_trunk_weights(backbone: str, out: Path) -> str:
    """Randomly initialised trunk weights written as the weights file of a pretrained backbone: every
    training of the run loads the same trunk (lockstep members must share theirs)."""
    torch.manual_seed(0)
    if backbone == "tiny":
        state = tiny_body().state_dict()
    elif backbone == "resnet101":
        state = torchvision.models.resnet101().state_dict()
    else:  # deeplab101: the trunk of DeepLabV3-ResNet101's state_dict
        state = {f"backbone.{k}": v for k, v in resnet_trunk(dilated_resnet101()).state_dict().items()}
    torch.save(state, out)
    return str(out)


def peak_tflops(device: torch.device) -> tuple[str, dict | None]:
    """``(device name, dense peaks by precision or None)``."""
    if device.type != "cuda":
        return f"CPU, {torch.get_num_threads()} threads", None
    name = torch.cuda.get_device_name(device)
    return name, next((peaks for fragment, peaks in PEAK_TFLOPS if fragment in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_training(caches: dict, tmp: Path, hp: dict, device):
    """``(model, optimizer, scheduler)`` of one training, as ``rmi.train.run`` builds them."""
    model = build(train_job(caches, tmp, hp), Vocab.load(caches["vocab"])).to(device)
    return model, *make_optimizer(model, hp["train"])


def memory(line: dict, device) -> dict:
    """Add the peak CUDA memory since the last ``reset_peak_memory_stats`` to ``line``."""
    if device.type == "cuda":
        line["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return line


def sample_batches(
    dataset: ReferDataset, batch: int, n: int, device: torch.device, trunk=None, group_by_image: bool = True
) -> list[dict]:
    """The first ``n`` training batches (CPU, pinned on CUDA); with ``trunk``, its features replace the images."""
    sampler = iter(StepBatchSampler(dataset.cache.image_index, batch, seed=0, group_by_image=group_by_image))
    out = []
    for _ in range(n):
        b = dataset.__getitems__(next(sampler))
        if trunk is not None:
            with torch.no_grad():
                b["trunk_features"] = trunk(b.pop("images").to(device)).float().cpu()
        out.append({k: v.pin_memory() if device.type == "cuda" else v for k, v in b.items()})
    return out


def flop_counter(meta_model):
    """``batch -> FLOPs`` of one training step (matmuls and convs, forward + backward), memoised by shape.

    Counted with ``meta_model``, a copy of the model on the meta device (no memory, no compute).
    """
    memo = {}

    def flops(batch: dict) -> float:
        start = first_word_column(batch["tokens"])
        inputs = {k: batch[k].to("meta") for k in ("image_of", "images", "trunk_features") if k in batch}
        key = start, *((k, tuple(v.shape)) for k, v in inputs.items()), tuple(batch["tokens"].shape)
        if key not in memo:
            with FlopCounterMode(display=False) as counter:
                logits = meta_model(batch["tokens"][:, start:].to("meta"), **inputs, trim_pads=False)
                loss_fn(logits, batch["target"].to("meta")).backward()
            memo[key] = float(counter.get_total_flops())
        return memo[key]

    return flops


def rates(line: dict, batch: int, step_s: float, flops: float | None, peaks: dict | None, peak_key: str) -> dict:
    """Add steps/s, expressions/s, FLOP rate, MFU and (batch 1) the paper training's hours to ``line``."""
    line.update(step_ms=round(1e3 * step_s, 3), steps_per_s=round(1 / step_s, 2), expr_per_s=round(batch / step_s, 1))
    if flops is not None:
        line.update(gflop_per_step=round(flops / 1e9, 1), tflops=round(flops / step_s / 1e12, 2))
        if peaks:
            line["mfu_percent"] = round(100 * flops / step_s / 1e12 / peaks[peak_key], 2)
    if batch == 1:
        line["paper_training_h"] = round(PAPER_STEPS * step_s / 3600, 1)
    return line


def time_steps(args, step, scheduler, batches: list[dict], device) -> tuple[float, float, torch.Tensor]:
    """A warm-up pass over ``batches`` (CUDA graphs are captured then), then ``--repeats`` timed passes:
    ``(warm-up seconds, median seconds per step, the last loss)``. A step includes the scheduler's."""

    def one_pass() -> torch.Tensor:
        for batch in batches:
            loss = step(batch)
            scheduler.step()
        return loss

    t0 = time.perf_counter()
    one_pass()
    sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        loss = one_pass()
        sync(device)
        times.append((time.perf_counter() - t0) / len(batches))
    return warm_s, statistics.median(times), loss


def time_case(args, fusion: str, case: Case, caches: dict, dataset, device, peaks, flops_of, tmp: Path) -> dict:
    """Warm up on ``--batches`` batches, then the median of ``--repeats`` timed passes over them."""
    hp = hparams(args, fusion, case, steps=PAPER_STEPS)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model, optimizer, scheduler = build_training(caches, tmp, hp, device)
    model.train()
    batches = sample_batches(dataset, case.batch, args.batches, device, model.trunk if case.features else None)
    amp, tf32_flag, peak_key = PRECISIONS[case.precision]
    criterion = partial(loss_fn, reduction=hp["train"]["loss_reduction"])
    step = make_step(model, optimizer, criterion, device, amp and device.type == "cuda", tf32_flag, case.graphs)
    warm_s, step_s, loss = time_steps(args, step, scheduler, batches, device)
    flops = statistics.mean(flops_of(b) for b in batches)
    line = {
        "kind": "train",
        "fusion": fusion,
        "case": case.name,
        "batch": case.batch,
        "precision": case.precision,
        "step": type(step).__name__,
        "words": round(statistics.mean(b["tokens"].shape[1] - first_word_column(b["tokens"]) for b in batches), 2),
        "images_per_batch": round(statistics.mean(len(b["image_of"].unique()) for b in batches), 2),
        "warmup_s": round(warm_s, 2),
        "loss_finite": bool(torch.isfinite(loss).item()),
    }
    if hasattr(step, "graphs"):
        line.update(graphs=len(step.graphs), capture_failure=step.failure)
    return rates(memory(line, device), case.batch, step_s, flops, peaks, peak_key)


def loop_step_s(log: Path) -> float:
    """Seconds per step over the second half of a ``train_log.csv`` (step, loss, lr, time)."""
    rows = [line.split(",") for line in log.read_text().splitlines()[1:]]
    (s0, t0), (s1, t1) = [(int(r[0]), float(r[3])) for r in (rows[len(rows) // 2], rows[-1])]
    return (t1 - t0) / (s1 - s0)


def time_loop(args, fusion: str, case: Case, caches: dict, device, peaks, tmp: Path, steps: int) -> dict:
    """Steps/s of the real training loop (``rmi.train.run``: DataLoader, step, logging) over its second half."""
    hp = hparams(args, fusion, case, steps=steps)
    run(train_job(caches, tmp, hp, threads=args.threads, device=str(device), log_every=max(1, steps // 20)))
    line = {"kind": "loop", "fusion": fusion, "case": f"loop-{case.name}", "batch": case.batch}
    return rates(line, case.batch, loop_step_s(tmp / "train_log.csv"), None, peaks, PRECISIONS[case.precision][2])


#: lockstep training is measured in config/paper.yaml's setting: batch 1 (uniform order), TF32, CUDA graphs,
#: the trunk run at every step (no feature cache)
LOCKSTEP_CASE = Case(1, "tf32", True)
PAPER_TRAININGS = len(PAPER["datasets"]) * len(PAPER["backbones"]) * len(PAPER["fusions"])


def lockstep_members(fusions: list[str], n_datasets: int, k: int) -> list[tuple[str, int]]:
    """``(fusion, dataset index)`` of K members, ordered by fusion (as ``rmi.lockstep.run`` orders them): the
    fusions in turn, then the next dataset; K = 8 on 4 datasets is a paper group (4 datasets x 2 fusions)."""
    return sorted((fusions[i % len(fusions)], i // len(fusions) % n_datasets) for i in range(k))


def time_solo(args, fusion: str, caches: dict, batches: list[dict], device, tmp: Path) -> dict:
    """The lockstep lines' reference: one training of ``fusion`` alone, ``LOCKSTEP_CASE``, on ``batches``."""
    hp = hparams(args, fusion, LOCKSTEP_CASE, steps=PAPER_STEPS)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, optimizer, scheduler = build_training(caches, tmp, hp, device)
    amp, tf32_flag, _ = PRECISIONS[LOCKSTEP_CASE.precision]
    criterion = partial(loss_fn, reduction=hp["train"]["loss_reduction"])
    step = make_step(model.train(), optimizer, criterion, device, amp, tf32_flag, LOCKSTEP_CASE.graphs)
    _, step_s, _ = time_steps(args, step, scheduler, batches, device)
    line = {"kind": "lockstep-solo", "fusion": fusion, "case": LOCKSTEP_CASE.name, "step": type(step).__name__}
    return memory({**line, "step_ms": round(1e3 * step_s, 3), "steps_per_s": round(1 / step_s, 2)}, device)


def lockstep_rates(line: dict, members: list[tuple[str, int]], group_step_s: float, solo: dict) -> dict:
    """Add to ``line`` the rate in all (member steps/s), its speed-up over the members' ``solo`` rates (fusion
    -> a line of one training alone, measured in the same run) and the paper grid's hours at that rate."""
    k = len(members)
    solo_s = statistics.mean(1 / solo[fusion]["steps_per_s"] for fusion, _ in members)  # a member's step alone
    line.update(fusions=",".join(f for f, _ in members), step_ms=round(1e3 * group_step_s, 3))
    line.update(steps_per_s=round(k / group_step_s, 2), speedup_vs_solo=round(solo_s * k / group_step_s, 2))
    line["grid_h"] = round(PAPER_TRAININGS * PAPER_STEPS * group_step_s / k / 3600, 1)
    return line


def time_lockstep(args, members: list[tuple[str, int]], datasets: list[dict], solo: dict, device, tmp: Path) -> dict:
    """K trainings in lockstep (``rmi.lockstep``'s model and step) on their datasets' batches; the rate in all,
    its speed-up over the ``solo`` lines (fusion -> line, measured in this run) and the paper grid's hours.

    ``datasets``: per dataset index ``{"caches": ..., "batches": [its batches, unpinned]}``.
    """
    k = len(members)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    specs = [(datasets[d]["caches"], hparams(args, fusion, LOCKSTEP_CASE, PAPER_STEPS)) for fusion, d in members]
    models = [build(train_job(caches, tmp, hp), Vocab.load(caches["vocab"])) for caches, hp in specs]
    model = LockstepSegmenter(models).to(device).train()
    optimizer, scheduler = make_optimizer(model, specs[0][1]["train"])
    batches = [stack_batches([datasets[d]["batches"][n] for _, d in members]) for n in range(args.batches)]
    batches = [{name: t.pin_memory() for name, t in b.items()} if device.type == "cuda" else b for b in batches]
    amp, tf32_flag, _ = PRECISIONS[LOCKSTEP_CASE.precision]
    criterion = member_losses(specs[0][1]["train"]["loss_reduction"])
    step = make_step(model, optimizer, criterion, device, amp, tf32_flag, LOCKSTEP_CASE.graphs)
    warm_s, step_s, loss = time_steps(args, step, scheduler, batches, device)
    line = {
        "kind": "lockstep",
        "case": f"lockstep-{LOCKSTEP_CASE.name}",
        "members": k,
        "datasets": len({d for _, d in members}),
        "step": type(step).__name__,
        "words": round(statistics.mean(b["tokens"].shape[-1] - first_word_column(b["tokens"]) for b in batches), 2),
        "warmup_s": round(warm_s, 2),
        "loss_finite": bool(torch.isfinite(loss).all().item()),
    }
    if hasattr(step, "graphs"):
        line.update(graphs=len(step.graphs), capture_failure=step.failure)
    return memory(lockstep_rates(line, members, step_s, solo), device)


def time_lockstep_loop(
    args, members: list[tuple[str, int]], datasets: list[dict], solo: dict, device, tmp: Path
) -> dict:
    """The rate in all of the real lockstep loop (``rmi.lockstep.run``: DataLoader, step, logging) over its
    second half; ``solo``: the real solo loops' lines (``rmi.train.run``) by fusion."""
    specs = []
    for i, (fusion, d) in enumerate(members):
        caches, hp = datasets[d]["caches"], hparams(args, fusion, LOCKSTEP_CASE, steps=args.lockstep_loop_steps)
        specs.append(TrainSpec(caches["train"], caches["vocab"], hp, tmp / f"{i}.pt", tmp / f"{i}.csv"))
    log_every = max(1, args.lockstep_loop_steps // 20)
    job = LockstepJob(members=specs, checkpoint_dir=tmp, threads=args.threads, device=str(device), log_every=log_every)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run_lockstep(job)
    line = {"kind": "lockstep-loop", "case": f"loop-lockstep-{LOCKSTEP_CASE.name}", "members": len(members)}
    return memory(lockstep_rates(line, members, loop_step_s(specs[0].out_log), solo), device)


def lockstep_datasets(args, caches: dict) -> list[dict]:
    """``--lockstep-datasets`` generated datasets (the first is ``caches``; the others another generator seed
    each, every other one without location words: other words and lengths), each ``{"caches", "batches"}``:
    its first ``--batches`` batches at batch 1 in uniform order, on the CPU."""
    datasets = [caches]
    for i in range(1, args.lockstep_datasets):
        root = caches["train"].parents[1] / f"lockstep{i}"  # next to --data's cache/: --data keeps them too
        found = {"vocab": root / "cache" / "vocab.txt", "train": root / "cache" / "train.h5"}
        if not found["train"].is_file():
            found = build_shapes_caches(root, {"train": args.images}, args.size, seed=5 + i, location_words=i % 2 == 0)
        datasets.append(found)
    cpu = torch.device("cpu")
    return [
        {"caches": c, "batches": sample_batches(ReferDataset(c["train"]), 1, args.batches, cpu, None, False)}
        for c in datasets
    ]


def lockstep_cases(args, caches: dict, device, tmp: Path, emit) -> None:
    """Solo references, then lockstep at each K of ``--lockstep`` (and, with ``--lockstep-loop-steps``, the real
    loops of both), on ``lockstep_datasets``."""
    datasets = lockstep_datasets(args, caches)
    ks = [int(k) for k in args.lockstep.split(",") if k]
    fusions = args.fusions.split(",")

    def attempt(kind: str, measure, **ids) -> dict | None:
        try:
            line = measure()
            emit(line)
            return line
        except Exception as err:  # one failing case (out of memory, say) must not lose the others
            emit({"kind": kind, **ids, "error": f"{type(err).__name__}: {err}"})
        finally:
            if device.type == "cuda":  # free the case's graphs and their memory pool
                gc.collect()
                torch.cuda.empty_cache()

    pinned = [{n: t.pin_memory() for n, t in b.items()} if device.type == "cuda" else b for b in datasets[0]["batches"]]
    solo = {
        f: attempt("lockstep-solo", partial(time_solo, args, f, caches, pinned, device, tmp / f), fusion=f)
        for f in fusions
    }
    for k in ks if all(solo.values()) else []:
        members = lockstep_members(fusions, len(datasets), k)
        attempt("lockstep", partial(time_lockstep, args, members, datasets, solo, device, tmp / f"k{k}"), members=k)
    if args.lockstep_loop_steps:
        solo_loops = {}
        for f in fusions:
            out, steps = tmp / f"loop-{f}", args.lockstep_loop_steps
            loop = partial(time_loop, args, f, LOCKSTEP_CASE, caches, device, None, out, steps)
            solo_loops[f] = attempt("loop", loop, fusion=f, case=f"loop-{LOCKSTEP_CASE.name}")
        for k in ks if all(solo_loops.values()) else []:
            members = lockstep_members(fusions, len(datasets), k)
            loop = partial(time_lockstep_loop, args, members, datasets, solo_loops, device, tmp / f"loop-k{k}")
            attempt("lockstep-loop", loop, members=k)


def predict_sweep(args, fusion: str, precision: str, caches: dict, device, tmp: Path, emit) -> None:
    """Forward throughput (no grad) at batch 1, 2, 4, ... until ``--predict-cap`` or out of memory."""
    vocab = Vocab.load(caches["vocab"])
    amp, tf32_flag, _ = PRECISIONS[precision]
    torch.manual_seed(0)
    model, _, _ = build_training(caches, tmp, hparams(args, fusion, Case(1, precision, False), 1), device)
    model.eval()
    batch = 1
    while batch <= args.predict_cap:
        n_images = math.ceil(batch / args.expr_per_image)
        inputs = {
            "tokens": torch.randint(4, len(vocab), (batch, 20), device=device),
            "image_of": torch.arange(batch, device=device) * n_images // batch,
            "images": torch.randint(0, 256, (n_images, 3, args.size, args.size), dtype=torch.uint8, device=device),
        }
        line = {"kind": "predict", "fusion": fusion, "precision": precision, "batch": batch, "images": n_images}
        try:
            with torch.no_grad(), tf32(tf32_flag), autocast(device, amp and device.type == "cuda"):
                model(**inputs)  # warm-up
                times = []
                for _ in range(3):
                    sync(device)
                    t0 = time.perf_counter()
                    model(**inputs)
                    sync(device)
                    times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            line["error"] = "out of memory"
            emit(line)
            break
        finally:
            del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
        t = statistics.median(times)
        emit({**line, "ms": round(1e3 * t, 2), "expr_per_s": round(batch / t, 1)})
        batch *= 2


def summarize(path: Path) -> None:
    """Tables of a JSON-lines file: training cases, speed-ups, predict throughput, paper grid wall time."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    devices = sorted({x["device"] for x in lines if x.get("kind") == "device"})
    print(f"device: {', '.join(devices) or '?'}")
    train = {(x["fusion"], x["case"]): x for x in lines if x.get("kind") in ("train", "loop") and "step_ms" in x}
    print(f"{'fusion':6s} {'case':28s} {'ms/step':>9s} {'steps/s':>8s} {'expr/s':>8s} {'MFU%':>6s} {'paper h':>8s}")
    for (fusion, case), x in train.items():
        mfu, hours = x.get("mfu_percent", "-"), x.get("paper_training_h", "-")
        speed = f"{x['step_ms']:9.2f} {x['steps_per_s']:8.1f} {x['expr_per_s']:8.1f}"
        print(f"{fusion:6s} {case:28s} {speed} {mfu:>6} {hours:>8}")
    for x in lines:
        if "error" in x and x.get("kind") != "predict":
            print(f"FAILED {x.get('fusion')} {x.get('case')}: {x['error']}")
    print("speed-ups (steps/s ratio):")
    for (fusion, case), x in train.items():
        if case.endswith("-graphs") and (fusion, case[: -len("graphs")] + "eager") in train:
            eager = train[fusion, case[: -len("graphs")] + "eager"]
            today = train.get((fusion, "b1-default-eager"))
            vs_today = f", {x['steps_per_s'] / today['steps_per_s']:.2f}x today" if today and x["batch"] == 1 else ""
            print(f"  {fusion} {case}: {x['steps_per_s'] / eager['steps_per_s']:.2f}x its eager step{vs_today}")
    best = {}
    for x in lines:
        if x.get("kind") == "predict" and "expr_per_s" in x:
            key = x["fusion"], x["precision"]
            if x["expr_per_s"] > best.get(key, {}).get("expr_per_s", 0):
                best[key] = x
    for (fusion, precision), x in sorted(best.items()):
        print(f"predict {fusion} {precision}: best {x['expr_per_s']:.0f} expr/s at batch {x['batch']}")
    predict = {}  # fusion -> its best predict line, tf32 first (config/paper.yaml predicts in fp32 with TF32)
    for (fusion, precision), x in best.items():
        if fusion not in predict or precision == "tf32":
            predict[fusion] = x
    # config/paper.yaml: per fusion one training per (dataset, backbone), one predict per (eval split, backbone)
    backbones = len(PAPER["backbones"])
    trainings = len(PAPER["datasets"]) * backbones
    splits = [(name, split) for name, d in PAPER["datasets"].items() for split in d["eval_splits"]]
    n_eval = backbones * sum(EVAL_EXPRESSIONS[s] for s in splits)
    for case in sorted({c for (_, c) in train if c.startswith("b1-")}):
        per_fusion = {f: x for (f, c), x in train.items() if c == case}
        if set(per_fusion) != set(PAPER["fusions"]) or not set(per_fusion) <= set(predict):
            continue
        train_s = sum(trainings * PAPER_STEPS * x["step_ms"] / 1e3 for x in per_fusion.values())
        predict_s = sum(n_eval / predict[f]["expr_per_s"] for f in per_fusion)
        print(
            f"paper grid on one GPU, {case} steps: {len(per_fusion) * trainings} trainings {train_s / 3600:.0f} h"
            f" + {len(per_fusion) * backbones * len(splits)} predicts {predict_s / 60:.1f} min"
            f" = {(train_s + predict_s) / 86400:.1f} days"
        )
    summarize_lockstep(lines)


def summarize_lockstep(lines: list[dict]) -> None:
    """The lockstep rows: K, steps/s in all, speed-up over solo (same run), the paper grid's hours, memory."""
    rows = [x for x in lines if x.get("kind") in ("lockstep-solo", "lockstep", "lockstep-loop") and "step_ms" in x]
    if not rows:
        return
    print(f"lockstep ({LOCKSTEP_CASE.name}): {'K':>3s} {'fusions':16s} {'ms/step':>9s} {'steps/s all':>11s}", end="")
    print(f" {'vs solo':>8s} {'grid h':>7s} {'GiB':>6s}")
    for x in rows:
        k = x.get("members", 1)
        what = {"lockstep-solo": "solo", "lockstep": "step", "lockstep-loop": "loop"}[x["kind"]]
        speedup = f"{x['speedup_vs_solo']:.2f}x" if "speedup_vs_solo" in x else "-"
        hours = x.get("grid_h", round(PAPER_TRAININGS * PAPER_STEPS / x["steps_per_s"] / 3600, 1))
        fusions = x.get("fusions", x.get("fusion", ""))
        print(f"  {what:16s} {k:3d} {fusions[:16]:16s} {x['step_ms']:9.2f} {x['steps_per_s']:11.1f}", end="")
        print(f" {speedup:>8s} {hours:7.1f} {x.get('max_memory_gib', '-'):>6}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--backbone", default="resnet101", choices=["resnet101", "deeplab101", "tiny"])
    p.add_argument("--size", type=int, default=320, help="S (paper: 320)")
    p.add_argument("--dims", default="paper", help="'paper' (1000/1000/1000/500) or one width for every dim")
    p.add_argument("--fusions", default="rmi,lstm")
    p.add_argument("--cases", default="b", help="comma-separated name prefixes of CASES to run ('' none)")
    p.add_argument("--images", type=int, default=60, help="images of the generated training split")
    p.add_argument("--data", type=Path, default=None, help="reuse (or build) the generated caches here")
    p.add_argument("--batches", type=int, default=40, help="batches per pass (the warm-up pass captures graphs)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    p.add_argument("--loop-steps", type=int, default=0, help="steps of each rmi.train.run loop case (0: none)")
    p.add_argument("--lockstep", default="", help="comma-separated K of the lockstep cases, e.g. 1,2,4,8 ('' none)")
    p.add_argument("--lockstep-datasets", type=int, default=4, help="generated datasets the lockstep members train on")
    p.add_argument("--lockstep-loop-steps", type=int, default=0, help="steps of each real lockstep loop (0: none)")
    p.add_argument("--predict", default="", help="comma-separated precisions of the predict sweep ('' none)")
    p.add_argument("--predict-cap", type=int, default=1024, help="largest predict batch tried")
    p.add_argument("--expr-per-image", type=int, default=7, help="expressions per image in predict batches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    p.add_argument("--summarize", type=Path, default=None, help="print the summary of a JSON-lines file and exit")
    a = p.parse_args()
    if a.summarize:
        summarize(a.summarize)
        return
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as rmi.train.run
    device = select_device(a.device)
    name, peaks = peak_tflops(device)

    def emit(line: dict) -> None:
        text = json.dumps(line)
        print(text, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(text + "\n")

    emit({"kind": "device", "device": name, "torch": torch.__version__, "peak_tflops": peaks})
    prefixes = [c for c in a.cases.split(",") if c]
    cases = [c for c in CASES if any(c.name.startswith(x) for x in prefixes)]
    with tempfile.TemporaryDirectory() as tmp:
        a.trunk_weights = random_trunk_weights(a.backbone, Path(tmp) / "trunk.pth")  # read by hparams()
        data = a.data or Path(tmp) / "data"
        caches = {"vocab": data / "cache" / "vocab.txt", "train": data / "cache" / "train.h5"}
        if not caches["train"].is_file():
            caches = build_shapes_caches(data, {"train": a.images}, image_size=a.size)
        dataset = ReferDataset(caches["train"])
        if a.lockstep:
            lockstep_cases(a, caches, device, Path(tmp), emit)
        for fusion in a.fusions.split(","):
            if cases:
                hp = hparams(a, fusion, cases[0], 1)
                meta_model, _, _ = build_training(caches, Path(tmp), hp, "meta")
                flops_of = flop_counter(meta_model)
            for k, case in enumerate(cases):
                out = Path(tmp) / f"{fusion}-{k}"
                try:
                    emit(time_case(a, fusion, case, caches, dataset, device, peaks, flops_of, out))
                except Exception as err:  # one failing case (out of memory, say) must not lose the others
                    emit(
                        {"kind": "train", "fusion": fusion, "case": case.name, "error": f"{type(err).__name__}: {err}"}
                    )
                if device.type == "cuda":  # free the case's graphs and their memory pool
                    gc.collect()
                    torch.cuda.empty_cache()
            for k, case in enumerate(LOOP_CASES if a.loop_steps else []):
                try:
                    emit(
                        time_loop(a, fusion, case, caches, device, peaks, Path(tmp) / f"{fusion}-loop{k}", a.loop_steps)
                    )
                except Exception as err:
                    emit({"kind": "loop", "fusion": fusion, "case": f"loop-{case.name}", "error": repr(err)})
            for precision in [x for x in a.predict.split(",") if x]:
                try:
                    predict_sweep(a, fusion, precision, caches, device, Path(tmp) / f"{fusion}-predict", emit)
                except Exception as err:
                    emit({"kind": "predict", "fusion": fusion, "precision": precision, "error": repr(err)})


if __name__ == "__main__":
    main()
