"""Training: sigmoid cross-entropy at S/8, Adam with polynomial decay, resumable checkpoints.

The official recipe (``util/loss.py`` and ``RMI_model.py``/``LSTM_model.py`` ``train_op`` of the
authors' code): the loss is the sigmoid cross-entropy of the S/8 logits against the padded mask
sampled at the cell grid, no class weighting, SUMMED over the cells and averaged over the batch
(``weighed_logistic_loss``: ``reduce_mean(reduce_sum(..., [1, 2, 3]))``), plus
``weight_decay * sum(w**2) / 2`` over the conv weights (``l2_regularization_loss``; here Adam's
``weight_decay``, which adds the same ``weight_decay * w`` to the gradient); Adam, lr 2.5e-4 decayed
polynomially (power 0.9) to 1e-5 over the run. The official code also doubles bias gradients, which
Adam's scale invariance makes a no-op; ``bias_lr_mult`` (a Caffe-style learning-rate multiplier of
conv biases) therefore defaults to 1.

Resumability: every ``checkpoint_every`` steps (and on SIGTERM) the full state -- model,
optimizer, scheduler, RNG, step, log rows, elapsed time -- is written atomically to
``checkpoint_dir/state.pt``. A restarted run with the same hyperparameters resumes from it and
(on CPU, fixed seeds, same thread count) ends with bit-identical weights; a checkpoint made
with other hyperparameters is ignored. The batch order is a pure function of (seed, step)
(``StepBatchSampler``), so no sampler state needs saving beyond the step.

Preemption: SLURM's ``--signal=TERM@...`` signals every process of the job, DataLoader workers
included. Workers ignore SIGTERM and SIGINT (``_ignore_stop_signals``); the main process finishes
its step, checkpoints, shuts the workers down and exits with ``PREEMPTED_EXIT_CODE``.

``rmi.lockstep`` (K trainings in one process) builds, checkpoints and loops with the same functions
(``build``, ``make_optimizer``, ``make_sampler``, ``make_loader``, ``Checkpoint``, ``train_loop``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from rmi.data.cache import CacheReader
from rmi.data.dataset import ReferDataset, StepBatchSampler, identity_collate
from rmi.device import select_device
from rmi.errors import InputError
from rmi.fileio import atomic_path, write_text
from rmi.model_file import ModelInfo, save_model
from rmi.text import Vocab
from rmi.train_step import make_step

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a job killed by SIGTERM reports


def poly_lr_factor(step: int, steps: int, lr: float, lr_end: float, power: float) -> float:
    """TF ``polynomial_decay`` as a factor of ``lr``: ``((lr-end)*(1-step/steps)^power + end)/lr``."""
    frac = 1.0 - min(step, steps) / steps
    return ((lr - lr_end) * frac**power + lr_end) / lr


def hparams_digest(hparams: dict) -> str:
    """Stable hash of the hyperparameters (decides whether a checkpoint may be resumed)."""
    return hashlib.sha1(json.dumps(hparams, sort_keys=True).encode()).hexdigest()


@dataclass(kw_only=True)
class RunSettings:
    """How a training process runs, not what it learns: checkpoints, threads, device, loader, logging."""

    checkpoint_dir: Path
    checkpoint_every: int = 0  # 0: only on SIGTERM (rule train passes the config's train.checkpoint_every)
    threads: int = 1
    device: str | None = None
    workers: int | None = None  # DataLoader worker processes; None: ``threads`` on CUDA, 0 on CPU
    log_every: int = 0  # 0: about 200 rows per run
    progress: bool | None = None  # None: a tqdm bar when stderr is a terminal
    _stop_requested: bool = field(default=False, repr=False)


@dataclass
class TrainSpec:
    """What one training reads, learns with and writes (``hparams``: see ``workflow_scripts/train.py``)."""

    cache: Path
    vocab: Path
    hparams: dict
    out_model: Path
    out_log: Path
    weights_path: str | None = None
    features: Path | None = None


@dataclass
class TrainJob(TrainSpec, RunSettings):
    """One training run: a ``TrainSpec`` run with ``RunSettings`` (see ``workflow_scripts/train.py``)."""


def start_process(job: RunSettings) -> torch.device:
    """Thread count and deterministic algorithms of a training process; returns its device."""
    torch.set_num_threads(max(1, job.threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    return select_device(job.device)


def open_data(spec: TrainSpec) -> tuple[Vocab, CacheReader]:
    """The vocabulary and the training cache of ``spec``, checked against each other and the image size."""
    vocab = Vocab.load(spec.vocab)
    cache = CacheReader(spec.cache)
    cache.check_compatible(vocab, spec.hparams["image_size"], f"{spec.vocab} and the config's image_size")
    skipped = json.loads(cache.attrs["skipped"])
    log.info("%s: %d expressions; skipped when cached, per reason: %s", spec.cache, len(cache), skipped or "none")
    return vocab, cache


def build(spec: TrainSpec, vocab: Vocab):
    """The untrained model of ``spec`` on the CPU, built right after ``torch.manual_seed(seed)``: the same
    initial weights whichever other models the process builds."""
    from rmi.models.segmenter import build_model

    hp = spec.hparams
    torch.manual_seed(hp["seed"])
    return build_model(hp["backbone"], hp["fusion"], len(vocab), hp["model"], hp["backbone_cfg"], spec.weights_path)


def make_optimizer(model, tr: dict):
    """Adam over ``model.param_groups`` and its polynomial learning-rate schedule (``tr``: config ``train:``)."""
    groups = model.param_groups(tr["lr"], tr["weight_decay"], tr["bias_lr_mult"])
    optimizer = torch.optim.Adam(groups, lr=tr["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: poly_lr_factor(s, tr["steps"], tr["lr"], tr["lr_end"], tr["lr_power"])
    )
    return optimizer, scheduler


def make_sampler(cache: CacheReader, hp: dict, start: int) -> StepBatchSampler:
    """The batches of ``cache`` from step ``start`` on, in the order ``hp`` (seed, ``train:``) fixes."""
    tr = hp["train"]
    lengths = cache.n_tokens if tr["length_buckets"] else None
    return StepBatchSampler(cache.image_index, tr["batch_size"], hp["seed"], tr["group_by_image"], start, lengths)


def make_loader(dataset, sampler, collate_fn, job: RunSettings, device: torch.device) -> DataLoader:
    """The DataLoader of a run: ``job.workers`` processes (default: ``job.threads`` on CUDA, 0 on CPU)."""
    on_cuda = device.type == "cuda"
    workers = job.workers if job.workers is not None else (job.threads if on_cuda else 0)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        worker_init_fn=_ignore_stop_signals if workers else None,
        pin_memory=on_cuda,
        persistent_workers=False,
    )


def model_info(spec: TrainSpec, vocab: Vocab, cache: CacheReader) -> ModelInfo:
    """What ``model.pt`` of a finished training says about itself."""
    hp = spec.hparams
    return ModelInfo(
        backbone=hp["backbone"],
        fusion=hp["fusion"],
        model_cfg=hp["model"],
        backbone_cfg=hp["backbone_cfg"],
        vocab=vocab,
        image_size=hp["image_size"],
        max_tokens=cache.max_tokens,
        hparams=hp,
        steps=int(hp["train"]["steps"]),
    )


@dataclass
class Checkpoint:
    """The resumable state of a run, written atomically to ``path``: model, optimizer, scheduler, RNG, step,
    log rows, elapsed time. ``digest`` (of the hyperparameters) decides whether a checkpoint may be resumed."""

    path: Path
    digest: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def save(self, step: int, rows: list, elapsed: float) -> None:
        """Write the state after ``step`` (``rows``: the log rows so far; ``elapsed``: seconds trained)."""
        state = {
            "digest": self.digest,
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rows": rows,
            "elapsed": elapsed,
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        log.info("checkpoint at step %d -> %s", step, self.path)

    def load(self) -> tuple[int, list, float]:
        """Restore a compatible checkpoint; return ``(step, rows, elapsed)`` (0, [], 0.0 if none)."""
        if not self.path.is_file():
            return 0, [], 0.0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a checkpoint is written atomically, so this means tampering
            raise InputError(
                self.path, f"cannot read training checkpoint ({type(err).__name__}: {err}); delete it to restart"
            ) from err
        if state.get("digest") != self.digest:
            log.warning("%s: made with other hyperparameters; starting from scratch", self.path)
            return 0, [], 0.0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        log.info("resuming from step %d (%s)", state["step"], self.path)
        return int(state["step"]), list(state["rows"]), float(state["elapsed"])


def write_log(path: Path, rows: list[list]) -> None:
    """``train_log.csv``: one ``step, loss, lr, time`` row per logged step."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "loss", "lr", "time"])
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: only the main process acts on SIGTERM/SIGINT (it checkpoints,
    then shuts the workers down); a worker killed by them would fail the main process first."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _periodic_checkpoint(job: RunSettings, step: int, steps: int) -> bool:
    return bool(job.checkpoint_every) and step % job.checkpoint_every == 0 and step < steps


def loss_fn(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "sum", row_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Sigmoid cross-entropy: ``(B, 1, h, w)`` logits vs ``(B, 1, h, w)`` {0, 1} target -> scalar.

    ``reduction="sum"``: the official loss, SUMMED over the cells and averaged over the batch;
    ``"mean"``: averaged over the cells too (makes weight decay ``h * w`` times stronger; kept for
    the README's ablation). ``row_mask``: ``(B,)`` float, 1 for an expression, 0 for a padding row
    (``rmi.lockstep`` pads a training's short batch to the group's): padding rows add nothing and
    the batch average is over the real rows.
    """
    weight = None if row_mask is None else row_mask.view(-1, 1, 1, 1)
    rows = logits.shape[0] if row_mask is None else row_mask.sum()
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight, reduction="sum") / rows
    if reduction == "mean":
        return loss / logits[0].numel()
    if reduction != "sum":
        raise ValueError(f"unknown loss reduction {reduction!r} (sum | mean)")
    return loss


def _rounded(loss: torch.Tensor) -> float | list[float]:
    """A logged loss: the float of a scalar, the floats of a ``(K,)`` vector, 6 decimals."""
    value = loss.tolist()
    return [round(x, 6) for x in value] if isinstance(value, list) else round(value, 6)


def train_loop(
    job: RunSettings,
    checkpoint: Checkpoint,
    train_step,
    loader: DataLoader,
    resumed: tuple[int, list, float],
    steps: int,
    describe: str,
) -> tuple[list, float]:
    """Run ``train_step`` on the loader's batches from step ``resumed[0]`` to ``steps``; return ``(rows, seconds)``.

    ``resumed``: ``(step, rows, elapsed)`` as ``checkpoint.load()`` returned them (the loader's sampler
    starts at that step). ``train_step(batch)`` returns the loss on the device: a scalar, or a ``(K,)``
    vector for K trainings run together (``rmi.lockstep``). Every ``job.log_every`` steps a row
    ``[step, loss, lr, time]`` is added, the loss averaged over the steps since the last row (a float,
    or K floats). Checkpoints every ``job.checkpoint_every`` steps; on SIGTERM it finishes the step,
    checkpoints and raises ``SystemExit(PREEMPTED_EXIT_CODE)``. ``describe`` is logged at the start.
    """
    start, rows, elapsed = resumed
    optimizer, scheduler = checkpoint.optimizer, checkpoint.scheduler
    log_every = job.log_every or max(1, steps // 200)

    def request_stop(signum, frame):
        job._stop_requested = True
        log.warning("received signal %d: will checkpoint and stop after this step", signum)

    previous = signal.signal(signal.SIGTERM, request_stop)
    show_bar = job.progress if job.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=steps, initial=start, disable=not show_bar, unit="step", dynamic_ncols=True)
    checkpoint.model.train()
    t0, running, n_running, last_print = time.monotonic() - elapsed, None, 0, time.monotonic()
    log.info("%s", describe)
    # the handler is in place before the workers start (they inherit it until _ignore_stop_signals)
    step, preempted = start, False
    batches = iter(loader)
    try:
        while step < steps and not preempted:
            batch = next(batches)
            step += 1
            loss = train_step(batch)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            running = loss if running is None else running + loss
            n_running += 1
            if step % log_every == 0 or step == steps:
                rows.append([step, _rounded(running / n_running), lr, round(time.monotonic() - t0, 3)])
                mean = statistics.fmean(np.atleast_1d(rows[-1][1]))
                running, n_running = None, 0
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                if not show_bar and time.monotonic() - last_print > 30:
                    last_print = time.monotonic()
                    rate = (step - start) / max(1e-9, rows[-1][3] - elapsed)
                    log.info("step %d/%d loss %.4f lr %.3g %.2f step/s", step, steps, mean, lr, rate)
            bar.update(1)
            preempted = job._stop_requested and step < steps  # after the last step: just finish
            if preempted or _periodic_checkpoint(job, step, steps):
                checkpoint.save(step, rows, time.monotonic() - t0)
    finally:
        bar.close()
        del batches  # the last reference: the iterator shuts its worker processes down
        signal.signal(signal.SIGTERM, previous)
    if preempted:
        log.warning("stopped at step %d after the signal; a rerun resumes from the checkpoint", step)
        raise SystemExit(PREEMPTED_EXIT_CODE)
    return rows, time.monotonic() - t0


def run(job: TrainJob) -> Path:
    """Train to ``hparams.train.steps`` (resuming if possible); write ``model.pt`` and the log."""
    hp, tr = job.hparams, job.hparams["train"]
    device = start_process(job)
    vocab, cache = open_data(job)
    model = build(job, vocab).to(device)
    optimizer, scheduler = make_optimizer(model, tr)
    checkpoint = Checkpoint(Path(job.checkpoint_dir) / "state.pt", hparams_digest(hp), model, optimizer, scheduler)
    resumed = checkpoint.load()
    steps = int(tr["steps"])
    dataset = ReferDataset(job.cache, features_path=job.features)
    loader = make_loader(dataset, make_sampler(cache, hp, resumed[0]), identity_collate, job, device)
    amp = bool(tr["amp"]) and device.type == "cuda"
    criterion = partial(loss_fn, reduction=tr["loss_reduction"])
    train_step = make_step(model, optimizer, criterion, device, amp, tr.get("tf32"), tr["cuda_graphs"])
    describe = (
        f"training {hp['backbone']}+{hp['fusion']} on {job.cache}: steps {resumed[0]}..{steps},"
        f" batch {tr['batch_size']}, device {device}, {loader.num_workers} loader workers"
    )
    rows, seconds = train_loop(job, checkpoint, train_step, loader, resumed, steps, describe)
    save_model(job.out_model, model, model_info(job, vocab, cache))
    write_log(Path(job.out_log), rows)
    checkpoint.path.unlink(missing_ok=True)
    log.info("done: %d steps in %.1f s -> %s", steps, seconds, job.out_model)
    return Path(job.out_model)
