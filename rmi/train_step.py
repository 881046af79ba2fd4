"""One training step -- forward, loss, backward, Adam update -- run op by op or replayed from CUDA graphs.

``EagerStep`` is the plain path (any device). At the paper's batch 1 it is launch-bound on a GPU:
a frozen ResNet-101 forward plus the word-LSTM and mLSTM scans forward and backward are over a
thousand small kernels per step, each one waiting for Python and the CUDA driver.

``GraphedStep`` (CUDA, ``train.cuda_graphs``) captures the whole step -- trunk, head forward
and backward, Adam -- into one CUDA graph per batch shape and then replays it with one launch.
The shape of a batch is that of its tensors with the leading all-``<pad>`` token columns cut
off on the host (``first_word_column`` of the CPU batch), so a graph runs exactly the steps
the eager path runs: batch 1 needs at most ``T`` graphs. The first batch of a shape runs
eagerly (creating Adam's state and warming cuBLAS/cuDNN) and is then captured; later batches
of that shape are copied into the graph's static input tensors and replayed. All graphs share
one memory pool (they never run at the same time). Adam runs with ``capturable=True`` (its
step counts live on the GPU) and, inside a graph, reads each group's learning rate from a
device tensor refreshed from the group's float before every replay, so the scheduler, the
log and checkpoints keep plain floats. A capture that fails (an op that reads the device,
say) is logged once and the run goes on eagerly.

Both steps also run K trainings in lockstep (``rmi.lockstep``): the model is then a
``LockstepSegmenter`` taking ``(K, ...)`` batches (``rmi.data.lockstep``), the loss returns the
``(K,)`` losses (a ``row_mask`` among its inputs), the backward of their sum gives each training its
own gradients, and the step returns the vector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from rmi.device import LOSS_INPUT_KEYS, MODEL_INPUT_KEYS, autocast, model_inputs, tf32
from rmi.models.segmenter import first_word_column

log = logging.getLogger(__name__)

LossFn = Callable[..., Tensor]  # (logits, target=..., [row_mask=...]) -> a scalar, or a (K,) vector in lockstep


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Switch Adam to (or from) its CUDA-graph-capturable form, state included.

    Capturable Adam keeps each parameter's step count on the parameter's device, the default
    form on the CPU; a checkpoint written by one form is moved to the other here.
    """
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(p.device if capturable else "cpu")


class EagerStep:
    """``batch -> loss``: forward (bf16 autocast if ``amp``), loss, backward, ``optimizer.step()``.

    ``loss_fn(logits, **loss inputs of the batch)`` (``LOSS_INPUT_KEYS``) returns a scalar, or the
    ``(K,)`` losses of K trainings run together (``rmi.lockstep``): each is backpropagated into its
    own training's parameters, and the step returns the vector.
    """

    def __init__(self, model, optimizer, loss_fn: LossFn, device: torch.device, amp: bool, tf32: bool | None = None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device, self.amp, self.tf32 = device, amp, tf32
        set_capturable(optimizer, False)

    def __call__(self, batch: dict) -> Tensor:
        """One step on ``batch`` (CPU tensors, see ``rmi.data.dataset``); returns the loss, detached, on the device."""
        with tf32(self.tf32):
            with autocast(self.device, self.amp):
                logits = self.model(**model_inputs(batch, self.device))
            loss = self.loss_fn(logits, **model_inputs(batch, self.device, LOSS_INPUT_KEYS))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward(torch.ones_like(loss))
            self.optimizer.step()
        return loss.detach()


class GraphedStep:
    """``batch -> loss`` replayed from one CUDA graph per batch shape (see the module doc).

    ``capture=False`` runs the same static-tensor step without graphs (what a failed capture
    falls back to; on the CPU it is how the step is tested). After a step ``p.grad`` holds that
    step's gradient, as after ``EagerStep`` (each graph keeps its own gradient tensors: one copy
    of the trainable parameters' size per shape). ``graphs`` maps a shape to its graph;
    ``failure`` says why capturing stopped (``None`` while it works).
    """

    def __init__(
        self,
        model,
        optimizer,
        loss_fn: LossFn,
        device: torch.device,
        amp: bool,
        tf32: bool | None = None,
        capture: bool = True,
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device, self.amp, self.tf32, self.capture = device, amp, tf32, capture
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.static: dict[tuple, Tensor] = {}  # (name, shape, dtype) -> device tensor the graphs read
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, list]] = {}  # shape -> (graph, loss, grads)
        self.failure: str | None = None
        set_capturable(optimizer, capture)
        if capture:
            self.stream = torch.cuda.Stream(device)
            self.pool = torch.cuda.graph_pool_handle()
            self.lrs = [torch.zeros((), device=device) for _ in optimizer.param_groups]

    def __call__(self, batch: dict) -> Tensor:
        """One step on ``batch`` (CPU tensors, pinned for asynchronous copies); returns the loss on the device."""
        with tf32(self.tf32):
            shape, inputs = self._stage(batch)
            if shape in self.graphs:
                graph, loss, grads = self.graphs[shape]
                for lr, group in zip(self.lrs, self.optimizer.param_groups, strict=True):
                    lr.fill_(group["lr"])
                graph.replay()
                for p, g in zip(self.params, grads, strict=True):
                    p.grad = g
                return loss.clone()
            loss = self._warm_up(inputs)
            if self.capture and self.failure is None:
                self._capture(shape, inputs)
            return loss

    def _stage(self, batch: dict) -> tuple[tuple, dict[str, Tensor]]:
        """Copy the batch's model and loss inputs into the static device tensors of their shapes.

        Returns the batch's shape key and the inputs, tokens cut at ``first_word_column`` (found on
        the host, so without a device sync; the cut is a view of the full-width static tensor).
        """
        inputs, shape = {}, []
        for name in (*MODEL_INPUT_KEYS, *LOSS_INPUT_KEYS):
            if name in batch:
                t = batch[name]
                key = name, tuple(t.shape), t.dtype
                if key not in self.static:
                    self.static[key] = torch.empty(t.shape, dtype=t.dtype, device=self.device)
                inputs[name] = self.static[key].copy_(t, non_blocking=True)
                shape.append(key)
        start = first_word_column(batch["tokens"])
        inputs["tokens"] = inputs["tokens"][..., start:]
        return (*shape, start), inputs

    def _step(self, inputs: dict[str, Tensor]) -> Tensor:
        """Forward, loss, backward and Adam on the static tensors: what a graph captures."""
        self.optimizer.zero_grad(set_to_none=True)  # a captured backward then writes fresh gradients
        with autocast(self.device, self.amp, cache=False):
            logits = self.model(**{k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS}, trim_pads=False)
        loss = self.loss_fn(logits, **{k: v for k, v in inputs.items() if k in LOSS_INPUT_KEYS})
        loss.backward(torch.ones_like(loss))
        self.optimizer.step()
        return loss.detach()

    def _warm_up(self, inputs: dict[str, Tensor]) -> Tensor:
        """Run a step eagerly: on the capture stream (as CUDA graphs require) while capturing is on."""
        if not (self.capture and self.failure is None):
            return self._step(inputs)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            loss = self._step(inputs)
        current.wait_stream(self.stream)
        return loss

    def _capture(self, shape: tuple, inputs: dict[str, Tensor]) -> None:
        """Record the step on ``inputs`` into a new graph (nothing runs); on failure stop capturing."""
        graph, had_state = torch.cuda.CUDAGraph(), set(self.optimizer.state)
        warm_grads = [p.grad for p in self.params]  # the capture replaces them with its unfilled outputs
        try:
            # the outer stream context restores the current stream even if the capture fails
            with torch.cuda.stream(self.stream), self._tensor_lrs():
                with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
                    loss = self._step(inputs)
            if set(self.optimizer.state) != had_state:  # Adam state made in a graph is reset by each replay
                raise RuntimeError("a parameter got its first gradient inside a CUDA graph capture")
        except Exception as err:  # e.g. an op that reads the device: the graph is unusable
            self.failure = f"{type(err).__name__}: {err}".splitlines()[0]
            self.graphs.clear()
            for p in set(self.optimizer.state) - had_state:  # never initialised: the capture ran nothing
                del self.optimizer.state[p]
            for p, g in zip(self.params, warm_grads, strict=True):
                p.grad = g
            torch.cuda.synchronize(self.device)
            log.warning("CUDA graph capture failed (%s); training goes on without graphs", self.failure)
            return
        self.graphs[shape] = graph, loss, [p.grad for p in self.params]
        for p, g in zip(self.params, warm_grads, strict=True):
            p.grad = g
        log.debug("captured a CUDA graph for batch shape %s (%d graphs)", shape, len(self.graphs))

    @contextmanager
    def _tensor_lrs(self) -> Iterator[None]:
        """Param groups hold the device learning-rate tensors (read by the captured Adam) in the block."""
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        for group, lr in zip(groups, self.lrs, strict=True):
            group["lr"] = lr
        try:
            yield
        finally:
            for group, value in zip(groups, floats, strict=True):
                group["lr"] = value


def make_step(
    model, optimizer, loss_fn: LossFn, device: torch.device, amp: bool, tf32: bool | None, cuda_graphs: bool
) -> EagerStep | GraphedStep:
    """The training step: ``GraphedStep`` when ``cuda_graphs`` and ``device`` is CUDA, else ``EagerStep``."""
    step_type = GraphedStep if cuda_graphs and device.type == "cuda" else EagerStep
    log.info(
        "training step: %s, bf16 autocast %s, TF32 %s", step_type.__name__, amp, "default" if tf32 is None else tf32
    )
    return step_type(model, optimizer, loss_fn, device, amp, tf32)
