"""Lockstep training: the trainings of one backbone (datasets x fusions) in one process, each as alone.

At the paper's batch 1 a training step is a few thousand small kernels: one training leaves a GPU
mostly idle, and trainings in separate processes only time-slice it. Here K trainings that share
the backbone and every setting but the dataset and the fusion (``SHARED``) take their steps
together (``rmi.models.lockstep``): the frozen trunk runs once on the K images, the heads of one
fusion run as one stack under ``torch.vmap``, and one Adam steps all of them, inside the step that
``rmi.train_step`` replays from a CUDA graph.

Each member trains as it would alone (``rmi.train.run``): built right after ``torch.manual_seed(seed)``
(the same initial weights), its own cache, vocabulary, features and ``StepBatchSampler`` (the same
batches in the same order), its own parameters and Adam state (one Adam over stacked parameters,
elementwise, equals K Adams with the same settings; the parameter groups are the members'), the
same learning-rate schedule, the official loss of its own batch (``rmi.train.loss_fn``: the
backward of the sum of the members' losses gives each member its own gradient), its own
``model.pt`` and ``train_log.csv``. Batches of different sizes are padded (``rmi.data.lockstep``):
padding rows are masked out of the loss and its batch mean, padding images are never gathered,
leading ``<pad>`` steps keep the LSTM states at zero. What differs from a solo run is float
rounding: batched matrix products and sums in another order (``tests/test_lockstep.py``: 1e-5).

The group runs and resumes like one training (``rmi.train.train_loop``): one checkpoint
``checkpoint_dir/state.pt`` holds every member's weights, Adam state and loss rows, resumed only
by a group of the same members and hyperparameters; SIGTERM checkpoints and exits 143.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rmi.data.dataset import ReferDataset
from rmi.data.lockstep import LockstepDataset, LockstepSampler, stack_batches
from rmi.errors import InputError
from rmi.model_file import save_model
from rmi.models.lockstep import LockstepSegmenter
from rmi.train import (
    Checkpoint,
    RunSettings,
    TrainSpec,
    build,
    hparams_digest,
    loss_fn,
    make_loader,
    make_optimizer,
    make_sampler,
    model_info,
    open_data,
    start_process,
    train_loop,
    write_log,
)
from rmi.train_step import make_step

log = logging.getLogger(__name__)

#: the hyperparameters every member of a group has in common (the others: ``fusion``, and the dataset's files)
SHARED = ("seed", "image_size", "backbone", "backbone_cfg", "model", "train")


@dataclass
class LockstepJob(RunSettings):
    """K trainings (``members``) run together; checkpoints and the other settings are the group's."""

    members: list[TrainSpec] = field(default_factory=list)


def check_members(members: list[TrainSpec]) -> None:
    """Raise ``InputError`` (naming the setting) unless ``members`` can train in lockstep."""
    if not members:
        raise InputError("train.lockstep", "a lockstep group needs at least one training")
    first = members[0]
    for m in members[1:]:
        for key in SHARED:
            if m.hparams[key] != first.hparams[key]:
                raise InputError(
                    m.out_model, f"lockstep: its {key} differs from {first.out_model}'s (only the fusion may)"
                )
        if m.weights_path != first.weights_path or (m.features is None) != (first.features is None):
            raise InputError(m.out_model, f"lockstep: other trunk weights or feature use than {first.out_model}")
    name, cfg = first.hparams["backbone"], first.hparams["backbone_cfg"]
    if not cfg["freeze_trunk"]:
        raise InputError(f"backbones.{name}.freeze_trunk", "lockstep training shares one frozen trunk: needs true")
    if len(members) > 1 and not (cfg["pretrained"] or first.weights_path or cfg.get("weights_path")):
        raise InputError(
            f"backbones.{name}.pretrained",
            "false and no weights_path: each training draws its own random trunk; lockstep shares one",
        )


def member_losses(reduction: str):
    """``(logits (K, B, 1, h, w), target (K, B, 1, h, w), row_mask (K, B)) -> (K,)``: ``loss_fn`` per member."""
    per_member = torch.vmap(lambda logits, target, row_mask: loss_fn(logits, target, reduction, row_mask))
    return lambda logits, target, row_mask: per_member(logits, target, row_mask)


def run(job: LockstepJob) -> list[Path]:
    """Train every member to ``train.steps`` (resuming if possible); write each member's ``model.pt`` and log."""
    members = sorted(job.members, key=lambda m: m.hparams["fusion"])  # one stack per fusion
    check_members(members)
    tr = members[0].hparams["train"]
    device = start_process(job)
    data = [open_data(m) for m in members]
    model = LockstepSegmenter([build(m, vocab) for m, (vocab, _) in zip(members, data, strict=True)]).to(device)
    optimizer, scheduler = make_optimizer(model, tr)
    digest = hparams_digest({"lockstep": [[str(m.cache), m.hparams] for m in members]})
    checkpoint = Checkpoint(Path(job.checkpoint_dir) / "state.pt", digest, model, optimizer, scheduler)
    resumed = checkpoint.load()
    steps = int(tr["steps"])
    dataset = LockstepDataset([ReferDataset(m.cache, features_path=m.features) for m in members])
    samplers = [make_sampler(cache, m.hparams, resumed[0]) for m, (_, cache) in zip(members, data, strict=True)]
    loader = make_loader(dataset, LockstepSampler(samplers), stack_batches, job, device)
    amp = bool(tr["amp"]) and device.type == "cuda"
    criterion = member_losses(tr["loss_reduction"])
    train_step = make_step(model, optimizer, criterion, device, amp, tr.get("tf32"), tr["cuda_graphs"])
    names = ", ".join(f"{m.hparams['backbone']}+{m.hparams['fusion']} on {m.cache}" for m in members)
    describe = (
        f"training {len(members)} models in lockstep ({names}): steps {resumed[0]}..{steps},"
        f" batch {tr['batch_size']}, device {device}, {loader.num_workers} loader workers"
    )
    rows, seconds = train_loop(job, checkpoint, train_step, loader, resumed, steps, describe)
    for k, (m, (vocab, cache)) in enumerate(zip(members, data, strict=True)):
        save_model(m.out_model, model.member(k), model_info(m, vocab, cache))
        write_log(Path(m.out_log), [[step, losses[k], lr, t] for step, losses, lr, t in rows])
    checkpoint.path.unlink(missing_ok=True)
    log.info("done: %d models, %d steps each in %.1f s", len(members), steps, seconds)
    return [Path(m.out_model) for m in job.members]
