"""The training step: the CUDA-graph path gives the eager path's losses, gradients, weights and logits.

On the CPU ``GraphedStep(capture=False)`` runs the graph path's step (static input tensors, tokens
cut on the host, ``trim_pads=False``) without capturing; the ``cuda`` tests capture and replay.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rmi.device import tf32
from rmi.models.segmenter import build_model, first_word_column
from rmi.train import loss_fn
from rmi.train_step import EagerStep, GraphedStep, make_step

S = 64
VOCAB = 30
on_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (expressions B, images U, first word column): shapes repeat, so graphs are replayed
SHAPES = [(4, 2, 15), (4, 2, 12), (4, 2, 15), (1, 1, 18), (4, 2, 12), (3, 3, 0), (1, 1, 18), (4, 2, 15)]


def make_batch(rng: torch.Generator, b: int, u: int, first: int, t: int = 20) -> dict:
    """A random batch in the dataset's layout: every row starts at or after ``first``, one row at ``first``."""
    tokens = torch.zeros(b, t, dtype=torch.int64)
    for row in range(b):
        start = first if row == 0 else int(torch.randint(first, t, (), generator=rng))
        tokens[row, start:] = torch.randint(1, VOCAB, (t - start,), generator=rng)
    return {
        "tokens": tokens,
        "image_of": torch.arange(b) * u // b,
        "images": torch.randint(0, 256, (u, 3, S, S), dtype=torch.uint8, generator=rng),
        "target": (torch.rand(b, 1, S // 8, S // 8, generator=rng) > 0.7).float(),
    }


def batches(seed: int = 0) -> list[dict]:
    rng = torch.Generator().manual_seed(seed)
    return [make_batch(rng, *shape) for shape in SHAPES]


def model_and_adam(fusion: str, frozen: bool, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    dims = {k: 16 for k in ("visual_dim", "embed_dim", "lstm_dim", "mlstm_dim", "mlp_dim")}
    cfg = {"pretrained": False, "freeze_trunk": frozen, "weights_path": None, "widths": [8, 8, 16]}
    model = build_model("tiny", fusion, VOCAB, dims, cfg).to(device)
    return model, torch.optim.Adam(model.param_groups(3e-3, 5e-4, 2.0), lr=3e-3)


def train_side_by_side(fusion: str, frozen: bool, device: torch.device, capture: bool, check=None):
    """Train two copies of one model on ``batches()``, eagerly and with ``GraphedStep``; compare every step.

    ``check(a, b)`` asserts two tensors agree. Learning rates change at each step (as the scheduler
    does) and differ per group. Returns both models, steps and the compared losses.
    """
    eager_model, eager_adam = model_and_adam(fusion, frozen, device)
    graph_model = copy.deepcopy(eager_model)
    graph_adam = torch.optim.Adam(graph_model.param_groups(3e-3, 5e-4, 2.0), lr=3e-3)
    eager = EagerStep(eager_model, eager_adam, loss_fn, device, amp=False, tf32=False)
    graphed = GraphedStep(graph_model, graph_adam, loss_fn, device, amp=False, tf32=False, capture=capture)
    for k, batch in enumerate(batches()):
        if device.type == "cuda":
            batch = {name: t.pin_memory() for name, t in batch.items()}
        for adam in (eager_adam, graph_adam):
            for group, scale in zip(adam.param_groups, (1.0, 2.0, 1.0), strict=False):
                group["lr"] = 3e-3 * scale * (1 - k / len(SHAPES))
        check(graphed(batch), eager(batch))
        for p, q in zip(graph_model.parameters(), eager_model.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None)
            if p.grad is not None:
                check(p.grad, q.grad)
    for p, q in zip(graph_model.parameters(), eager_model.parameters(), strict=True):
        check(p, q)
    for p, q in zip(graph_model.buffers(), eager_model.buffers(), strict=True):  # BatchNorm statistics
        check(p, q)
    return eager_model, graph_model, graphed


def close(rtol: float, atol: float):
    return lambda a, b: torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def close_in_norm(rtol: float):
    def check(a, b):
        error, scale = (a - b).float().norm().item(), b.float().norm().item()
        assert error <= rtol * scale + 1e-7, f"|a - b| = {error:.3g}, |b| = {scale:.3g} (shape {tuple(b.shape)})"

    return check


def test_first_word_column():
    tokens = torch.tensor([[0, 0, 0, 5, 6], [0, 0, 7, 8, 9], [0, 0, 0, 0, 4]])
    assert first_word_column(tokens) == 2
    assert first_word_column(tokens[[0, 2]]) == 3
    assert first_word_column(torch.zeros(2, 5, dtype=torch.int64)) == 4  # all padding: the last step runs
    assert first_word_column(torch.stack([tokens[[0, 2]], tokens[[2, 1]]])) == 2  # (K, B, T): over every row


@pytest.mark.parametrize("fusion,frozen", [("rmi", False), ("lstm", False), ("rmi", True)])
def test_uncaptured_graph_step_equals_eager_step_on_cpu(fusion, frozen):
    eager_model, graph_model, _ = train_side_by_side(fusion, frozen, torch.device("cpu"), False, close(1e-5, 1e-5))
    # logits: the trimmed forward of the graph path and the eager forward after the same training
    batch = batches(seed=1)[0]
    start = first_word_column(batch["tokens"])
    inputs = {k: batch[k] for k in ("image_of", "images")}
    with torch.no_grad():
        eager = eager_model.eval()(batch["tokens"], **inputs)
        graph = graph_model.eval()(batch["tokens"][:, start:], **inputs, trim_pads=False)
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5)
    assert eager.shape == (4, 1, S // 8, S // 8)


def test_make_step_falls_back_to_eager_off_cuda():
    model, adam = model_and_adam("rmi", False, torch.device("cpu"))
    step = make_step(model, adam, loss_fn, torch.device("cpu"), amp=False, tf32=None, cuda_graphs=True)
    assert type(step) is EagerStep
    assert all(not group["capturable"] for group in adam.param_groups)


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_sets_both_flags_and_restores_them(enabled):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32(enabled):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (enabled, enabled)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with tf32(None):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


@pytest.mark.cuda
@on_cuda
@pytest.mark.parametrize("fusion,frozen", [("rmi", False), ("lstm", False), ("rmi", True)])
def test_cuda_graph_replays_equal_eager_steps(fusion, frozen):
    # fp32 without TF32: the graphs run the eager kernels, but capturable Adam rounds differently and
    # cuDNN may pick other algorithms, so after a few steps single elements drift by ~1e-4 of their
    # tensor's scale: compared in norm (a missing or stale gradient is off by ~100%)
    _, _, graphed = train_side_by_side(fusion, frozen, torch.device("cuda"), True, close_in_norm(1e-3))
    assert graphed.failure is None
    assert len(graphed.graphs) == len(set(SHAPES))


@pytest.mark.cuda
@on_cuda
def test_cuda_graph_capture_failure_goes_on_eagerly():
    def loss_reading_the_device(logits, target):  # .item() waits for the GPU: not capturable
        loss = loss_fn(logits, target)
        return loss + 0 * loss.item()

    device = torch.device("cuda")
    model, adam = model_and_adam("rmi", False, device)
    twin = copy.deepcopy(model)
    twin_adam = torch.optim.Adam(twin.param_groups(3e-3, 5e-4, 2.0), lr=3e-3)
    graphed = GraphedStep(model, adam, loss_reading_the_device, device, amp=False, tf32=False)
    eager = EagerStep(twin, twin_adam, loss_reading_the_device, device, amp=False, tf32=False)
    for batch in batches():
        torch.testing.assert_close(graphed(batch), eager(batch), rtol=1e-4, atol=1e-5)
    assert graphed.failure is not None and not graphed.graphs
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@on_cuda
def test_adam_state_moves_between_graph_and_eager_steps(tmp_path):
    device = torch.device("cuda")
    model, adam = model_and_adam("rmi", True, device)
    graphed = GraphedStep(model, adam, loss_fn, device, amp=False)
    for batch in batches()[:3]:
        graphed(batch)
    torch.save({"model": model.state_dict(), "adam": adam.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    fresh, fresh_adam = model_and_adam("rmi", True, device, seed=1)
    fresh.load_state_dict(state["model"])
    fresh_adam.load_state_dict(state["adam"])
    eager = EagerStep(fresh, fresh_adam, loss_fn, device, amp=False)  # capturable state -> step counts on the CPU
    assert all(s["step"].device.type == "cpu" for s in fresh_adam.state.values())
    assert torch.isfinite(eager(batches()[3]))
    regraphed = GraphedStep(fresh, fresh_adam, loss_fn, device, amp=False)
    assert all(s["step"].device.type == "cuda" for s in fresh_adam.state.values())
    for batch in batches()[:3]:
        assert torch.isfinite(regraphed(batch))
    assert regraphed.failure is None and all(float(s["step"]) == 7 for s in fresh_adam.state.values())
