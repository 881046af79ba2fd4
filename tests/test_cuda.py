"""The CUDA path: training with bf16 autocast and pinned memory, inference, agreement with the CPU.

Runs only where CUDA is available (``-m cuda``; the device machine, not CI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from builders import build_shapes_caches, process_group, tiny_hparams, train_job
from rmi.data.dataset import ReferDataset
from rmi.device import select_device
from rmi.inference import predict_logits
from rmi.model_file import load_model
from rmi.train import PREEMPTED_EXIT_CODE, run

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
S = 64


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return build_shapes_caches(tmp_path_factory.mktemp("shapes"), {"train": 60, "val": 20}, image_size=S)


def hparams(fusion: str, amp: bool) -> dict:
    return tiny_hparams(fusion, 150, image_size=S, dim=32, amp=amp)


def test_select_device_prefers_cuda():
    assert select_device().type == "cuda"
    assert select_device("cpu").type == "cpu"


@pytest.mark.parametrize("fusion", ["lstm", "rmi"])
def test_cuda_bf16_training_and_inference(caches, tmp_path, fusion):
    out = tmp_path / fusion
    run(train_job(caches, out, hparams(fusion, amp=True), threads=2, device="cuda", log_every=10))
    loss = pd.read_csv(out / "train_log.csv")["loss"].to_numpy()
    assert np.isfinite(loss).all()
    assert loss[-3:].mean() < 0.8 * loss[:2].mean()

    # the saved model loads on either device; CUDA (fp32) and CPU logits agree, bf16 close to fp32
    dataset = ReferDataset(caches["val"], with_targets=False)
    gpu, _ = load_model(out / "model.pt", torch.device("cuda"))
    cpu, _ = load_model(out / "model.pt", torch.device("cpu"))
    fp32 = predict_logits(gpu, dataset, 16, torch.device("cuda"), threads=2, amp=False)
    bf16 = predict_logits(gpu, dataset, 16, torch.device("cuda"), threads=2, amp=True)
    ref = predict_logits(cpu, dataset, 16, torch.device("cpu"), amp=False)
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(fp32 - ref).max() < 1e-2 * scale  # cuDNN convs use TF32 by default
    assert np.abs(bf16 - ref).max() < 0.1 * scale
    assert ((bf16 > 0) == (ref > 0)).mean() > 0.98


def test_cuda_sigterm_to_the_process_group_with_default_workers(caches, tmp_path):
    """On CUDA the trainer starts ``--threads`` loader workers by default; SIGTERM to the whole
    process group (as SLURM sends it) checkpoints, exits 143 and leaves no process; the rerun resumes."""
    hp = hparams("rmi", amp=True)
    hp["train"]["steps"] = 600
    script = Path(__file__).resolve().parents[1] / "workflow_scripts" / "train.py"
    cmd = [sys.executable, str(script), "--cache", str(caches["train"]), "--vocab", str(caches["vocab"])]
    cmd += ["--hparams", json.dumps(hp), "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "20"]
    cmd += ["--threads", "2", "--device", "cuda", "--out-model", str(tmp_path / "model.pt")]
    cmd += ["--out-log", str(tmp_path / "log.csv")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = tmp_path / "ckpt" / "state.pt"
    deadline = time.monotonic() + 180
    while not (state.exists() and torch.load(state, weights_only=True)["step"] >= 20):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    assert len(process_group(proc.pid)) == 3, "expected the trainer and its 2 loader workers"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE, proc.stderr.read()
    stderr = proc.stderr.read()
    assert "2 loader workers" in stderr and "Traceback" not in stderr
    assert 20 <= torch.load(state, weights_only=True)["step"] < 600
    deadline = time.monotonic() + 10
    while process_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_group(proc.pid), "loader workers outlived the trainer"

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True, timeout=300)
    assert resumed.returncode == 0 and "resuming from step" in resumed.stderr, resumed.stderr
    assert pd.read_csv(tmp_path / "log.csv")["step"].iloc[-1] == 600
