"""Lockstep training (rmi.lockstep): each member of a group trains as it would alone; the group resumes exactly."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import subprocess
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch

from builders import build_shapes_caches, one_line_error, script_env, tiny_hparams, wait_for
from rmi.data.cache import CacheReader
from rmi.data.dataset import ReferDataset
from rmi.data.lockstep import stack_batches
from rmi.features import extract_features
from rmi.lockstep import LockstepJob, check_members, member_losses
from rmi.lockstep import run as run_lockstep
from rmi.models.backbones import tiny_body
from rmi.models.lockstep import EMBEDDING, LockstepSegmenter
from rmi.text import Vocab
from rmi.train import PREEMPTED_EXIT_CODE, TrainJob, TrainSpec, build, make_optimizer, run
from rmi.train_step import EagerStep, GraphedStep

REPO = Path(__file__).resolve().parents[1]
S = 32
WIDTHS = (4, 4, 8)
FUSIONS = ("lstm", "rmi")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Two small datasets of different vocabularies, expression lengths and token widths; one trunk
    weights file (as a pretrained backbone), and each dataset's trunk features."""
    root = tmp_path_factory.mktemp("lockstep")
    datasets = {
        "long": build_shapes_caches(root / "long", {"train": 5}, image_size=S),
        "short": build_shapes_caches(root / "short", {"train": 4}, S, max_tokens=15, seed=9, location_words=False),
    }
    weights = root / "trunk.pth"
    torch.manual_seed(1)
    torch.save(tiny_body(WIDTHS).state_dict(), weights)
    trunk = {"pretrained": True, "freeze_trunk": True, "weights_path": None, "widths": list(WIDTHS)}
    for name, caches in datasets.items():
        caches["features"] = root / f"{name}_features.h5"
        extract_features(caches["train"], caches["features"], "tiny", trunk, 8, weights_path=str(weights))
    long, short = (CacheReader(d["train"]) for d in datasets.values())
    assert long.n_tokens.mean() > short.n_tokens.mean() + 1 and long.max_tokens != short.max_tokens
    assert len(Vocab.load(datasets["long"]["vocab"])) != len(Vocab.load(datasets["short"]["vocab"]))
    return {"datasets": datasets, "weights": str(weights), "trunk": trunk}


def hparams(grid, fusion: str, steps: int, **train) -> dict:
    hp = tiny_hparams(fusion, steps, image_size=S, dim=8, **train)
    hp["backbone_cfg"] = dict(grid["trunk"])
    return hp


def specs(grid, out: Path, steps: int, features: bool, **train) -> dict[tuple[str, str], TrainSpec]:
    """Every (dataset, fusion) of ``grid`` as a training writing under ``out/<dataset>_<fusion>``."""
    return {
        (name, fusion): TrainSpec(
            cache=caches["train"],
            vocab=caches["vocab"],
            hparams=hparams(grid, fusion, steps, **train),
            out_model=out / f"{name}_{fusion}" / "model.pt",
            out_log=out / f"{name}_{fusion}" / "train_log.csv",
            weights_path=grid["weights"],
            features=caches["features"] if features else None,
        )
        for (name, caches), fusion in itertools.product(grid["datasets"].items(), FUSIONS)
    }


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def train_alone_and_together(grid, out: Path, steps: int, features: bool, device: str = "cpu", **train):
    """Every (dataset, fusion) of ``grid`` trained alone (``rmi.train.run``) and as one lockstep group;
    returns ``[(alone, together)]`` TrainSpec pairs. Logs every step."""
    solo = specs(grid, out / "solo", steps, features, **train)
    group = specs(grid, out / "group", steps, features, **train)
    for spec in solo.values():
        checkpoint_dir = spec.out_model.parent / "ckpt"
        run(TrainJob(**asdict(spec), checkpoint_dir=checkpoint_dir, log_every=1, progress=False, device=device))
    members = list(group.values())
    run_lockstep(LockstepJob(members=members, checkpoint_dir=out / "ckpt", log_every=1, device=device, progress=False))
    assert not (out / "ckpt" / "state.pt").exists()
    return [(solo[key], group[key]) for key in solo]


@pytest.mark.parametrize(
    "features,train",
    [
        (False, {"batch_size": 1, "group_by_image": False}),  # config/paper.yaml's setting
        (True, {"batch_size": 1, "group_by_image": False}),
        (False, {"batch_size": 4, "group_by_image": True}),  # batches of 1-4 images, short last batches
        (True, {"batch_size": 3, "group_by_image": False, "length_buckets": True}),
    ],
    ids=["b1-trunk", "b1-features", "b4-grouped-trunk", "b3-buckets-features"],
)
def test_each_member_trains_as_alone(grid, tmp_path, features, train):
    """Both fusions on two datasets in one group: each member's losses and weights after 12 steps equal
    its solo run's to 1e-5 (the tolerance of the graph-vs-eager step test), past an epoch's end."""
    torch.set_num_threads(1)
    steps = 12
    for alone, together in train_alone_and_together(grid, tmp_path, steps, features, **train):
        wa, wt = weights(alone.out_model), weights(together.out_model)
        assert wa.keys() == wt.keys()
        for name in wa:
            torch.testing.assert_close(wt[name], wa[name], rtol=1e-5, atol=1e-5, msg=f"{alone.out_model} {name}")
        la, lt = pd.read_csv(alone.out_log), pd.read_csv(together.out_log)
        assert list(la["step"]) == list(lt["step"]) == list(range(1, steps + 1))
        pd.testing.assert_series_equal(la["lr"], lt["lr"])
        pd.testing.assert_series_equal(la["loss"], lt["loss"], rtol=1e-5, atol=1e-5)
        stored = torch.load(together.out_model, weights_only=True)
        assert stored["hparams"] == alone.hparams and stored["fusion"] == alone.hparams["fusion"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_each_member_trains_as_alone_with_cuda_graphs(grid, tmp_path, caplog):
    """On CUDA, graphed lockstep steps (the vmapped heads captured with the trunk and Adam) against graphed
    solo steps, fp32 without TF32: weights equal in norm to 1e-3 (as test_train_step's graph-vs-eager test)."""
    caplog.set_level(logging.INFO)
    train = {"batch_size": 1, "group_by_image": False, "amp": False, "tf32": False}
    pairs = train_alone_and_together(grid, tmp_path, 30, False, device="cuda", **train)
    assert "capture failed" not in caplog.text and "GraphedStep" in caplog.text
    for alone, together in pairs:
        wa, wt = weights(alone.out_model), weights(together.out_model)
        for name in wa:
            error, scale = (wt[name] - wa[name]).float().norm().item(), wa[name].float().norm().item()
            assert error <= 1e-3 * scale + 1e-7, f"{alone.out_model} {name}: |a - b| = {error:.3g}, |b| = {scale:.3g}"


def test_padding_embedding_rows_never_move(grid, tmp_path):
    """Members of different vocabulary sizes share a stack padded to the largest: a member's padding rows
    get zero gradients and stay zero through Adam steps; its real rows learn."""
    members = [spec for (_, fusion), spec in specs(grid, tmp_path, 10, False).items() if fusion == "rmi"]
    models = [build(m, Vocab.load(m.vocab)) for m in members]
    sizes = [m.fusion.language.embedding.num_embeddings for m in models]
    start = [m.fusion.language.embedding.weight.detach().clone() for m in models]
    model = LockstepSegmenter(models)
    optimizer, _ = make_optimizer(model, hparams(grid, "rmi", 10)["train"])
    step = EagerStep(model, optimizer, member_losses("sum"), torch.device("cpu"), amp=False)
    readers = [ReferDataset(c["train"]) for c in grid["datasets"].values()]
    for rows in ([0, 1], [2], [3, 4, 5]):
        losses = step(stack_batches([r.__getitems__(rows) for r in readers]))
        assert losses.shape == (2,)
        table = dict(model.stacks[0].named_parameters())[EMBEDDING]
        for k, n in enumerate(sizes):
            assert not table[k, n:].any() and not table.grad[k, n:].any()
    for k in range(len(models)):
        assert not torch.equal(model.member(k).fusion.language.embedding.weight, start[k])


def test_uncaptured_graph_step_equals_eager_step_for_a_group(grid, tmp_path):
    """The lockstep model through GraphedStep's path (static (K, ...) tensors, tokens cut on the host at
    the group's first word, the row mask a loss input), not captured: the eager step's losses and weights."""
    members = sorted(specs(grid, tmp_path, 10, False).values(), key=lambda m: m.hparams["fusion"])
    readers = [ReferDataset(m.cache) for m in members]
    models, steps = [], []
    for step_type in (EagerStep, partial(GraphedStep, capture=False)):
        model = LockstepSegmenter([build(m, Vocab.load(m.vocab)) for m in members])
        optimizer, _ = make_optimizer(model, members[0].hparams["train"])
        models.append(model)
        steps.append(step_type(model, optimizer, member_losses("sum"), torch.device("cpu"), amp=False))
    for rows in ([0, 1, 2], [3], [4, 5], [3], [0, 1, 2]):  # batch shapes repeat, one stack per fusion
        batch = stack_batches([r.__getitems__(rows[: 1 + k % len(rows)]) for k, r in enumerate(readers)])
        eager, graphed = (step(batch) for step in steps)
        torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    for p, q in zip(models[1].parameters(), models[0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def _cli(members: list[TrainSpec], checkpoint_dir: Path, every: int) -> list[str]:
    """``workflow_scripts/train_lockstep.py`` on ``members`` (as rule train_lockstep calls it), on the CPU."""
    fields = ("cache", "vocab", "features", "out_model", "out_log")
    payload = [{"hparams": m.hparams, **{k: getattr(m, k) and str(getattr(m, k)) for k in fields}} for m in members]
    script = REPO / "workflow_scripts" / "train_lockstep.py"
    options = {"--checkpoint-dir": checkpoint_dir, "--checkpoint-every": every, "--threads": 1, "--device": "cpu"}
    cli = [sys.executable, str(script), "--members", json.dumps(payload), f"--weights={members[0].weights_path}"]
    return cli + [str(x) for option in options.items() for x in option]


def test_sigterm_then_resume_is_bit_exact(grid, tmp_path):
    """SIGTERM: the group finishes its step, checkpoints every member and exits 143; the rerun resumes and
    ends with every member's weights and log equal, bit for bit, to an uninterrupted group run's (one
    without DataLoader workers)."""
    steps = 150
    ref, cut = (
        list(specs(grid, tmp_path / name, steps, False, batch_size=1, group_by_image=False).values())
        for name in ("ref", "cut")
    )
    subprocess.run(_cli(ref, tmp_path / "ref" / "ckpt", 10), env=script_env(), check=True, capture_output=True)

    cmd = [*_cli(cut, tmp_path / "cut" / "ckpt", 10), "--workers", "2"]  # workers change nothing but the speed
    proc = subprocess.Popen(cmd, env=script_env(), stderr=subprocess.PIPE, text=True)
    state = tmp_path / "cut" / "ckpt" / "state.pt"
    wait_for(lambda: state.exists() and torch.load(state, weights_only=True)["step"] >= 20, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == PREEMPTED_EXIT_CODE, proc.stderr.read()
    assert 20 <= torch.load(state, weights_only=True)["step"] < steps
    assert not any(m.out_model.exists() or m.out_log.exists() for m in cut)
    resumed = subprocess.run(cmd, env=script_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stderr and not state.exists()
    for a, b in zip(ref, cut, strict=True):
        wa, wb = weights(a.out_model), weights(b.out_model)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        pd.testing.assert_frame_equal(
            pd.read_csv(a.out_log)[["step", "loss", "lr"]], pd.read_csv(b.out_log)[["step", "loss", "lr"]]
        )


def test_checkpoint_of_another_group_is_ignored(grid, tmp_path):
    members = list(specs(grid, tmp_path, 4, True, batch_size=2).values())
    job = LockstepJob(members=members, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2, progress=False)
    run_lockstep(job)
    first = [pd.read_csv(m.out_log) for m in members]
    torch.save({"digest": "other", "step": 2}, tmp_path / "ckpt" / "state.pt")
    run_lockstep(job)
    for log, m in zip(first, members, strict=True):
        pd.testing.assert_frame_equal(log[["step", "loss"]], pd.read_csv(m.out_log)[["step", "loss"]])


def test_members_that_cannot_share_are_refused(grid, tmp_path):
    """A setting other than the fusion that differs, a trainable or a random (unshared) trunk: one line naming it."""

    def group(**backbone):
        members = list(specs(grid, tmp_path, 5, False).values())
        for m in members:
            m.hparams["backbone_cfg"].update(backbone)
        return members

    other_lr = group()
    other_lr[2].hparams["train"]["lr"] = 1e-3
    assert "its train differs from" in one_line_error(check_members, other_lr)
    assert one_line_error(check_members, group(freeze_trunk=False)).startswith("backbones.tiny.freeze_trunk: ")
    random_trunks = group(pretrained=False)
    for m in random_trunks:
        m.weights_path = None
    assert one_line_error(check_members, random_trunks).startswith("backbones.tiny.pretrained: ")
    check_members(group())
