"""GPU slots for local runs: each GPU job of a workstation run gets its own GPU (or a share of one).

Snakemake's ``resources: gpu=N`` caps how many GPU jobs run at once but gives them no GPU ids, so
without help every job runs on ``cuda:0``. Here a job takes a *slot*, a pair ``(GPU id, k)`` with
``k < jobs_per_gpu``, by holding an exclusive ``fcntl.flock`` on the slot's lock file under a
directory shared by the run's jobs (the workflow uses ``<results_dir>/.gpu_slots``), and then sets
``CUDA_VISIBLE_DEVICES`` to that one id. The lock lives as long as the process's file descriptor,
so the slot is freed when the job ends, however it ends (``kill -9`` included). Forked children
(DataLoader workers) share the descriptor, so the slot stays taken until they are gone too.

The GPU ids are those of ``CUDA_VISIBLE_DEVICES`` when it is set (empty or ``-1``: no GPU), else
the ``GPU <i>:`` lines of ``nvidia-smi -L`` (no ``nvidia-smi``, or one that fails: no GPU). With
no GPU, or under SLURM (``SLURM_JOB_ID`` set: SLURM sets ``CUDA_VISIBLE_DEVICES`` per job),
nothing is done.

Order: take the slot before CUDA is initialised in the process. Importing torch first is fine;
any CUDA call (``torch.cuda.is_available()`` included) fixes the visible devices for good.
``rmi.cli.common.run_cli(main, gpu=True)`` takes it before ``main`` runs, from the environment
variables that ``rules/common.smk`` exports (``SLOTS_ENV``, ``JOBS_PER_GPU_ENV``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from rmi.errors import InputError

log = logging.getLogger(__name__)

#: environment variables naming the slot directory and the jobs per GPU (set by rules/common.smk)
SLOTS_ENV = "RMI_GPU_SLOTS"
JOBS_PER_GPU_ENV = "RMI_JOBS_PER_GPU"
#: seconds between two looks at the slots while all of them are taken
POLL_S = 0.5

#: the open lock file of this process's slot: never closed, so the OS frees it at exit
_held = None


def gpu_ids() -> list[str]:
    """The ids of the GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``.

    As CUDA does, the ``CUDA_VISIBLE_DEVICES`` list ends at its first empty or negative entry
    (``""`` and ``"-1"`` mean no GPU); ids are kept as written (indices or UUIDs).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return ids
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return re.findall(r"^GPU (\d+):", out.stdout, flags=re.MULTILINE)


def acquire(slot_dir: str | Path, jobs_per_gpu: int) -> str | None:
    """Take a free slot of the GPUs of ``gpu_ids()`` (waiting while all are taken); return its GPU id.

    Sets ``CUDA_VISIBLE_DEVICES`` to that id and keeps the slot until the process exits. The GPU
    with the fewest taken slots wins (ties: the first in ``gpu_ids()`` order), so jobs spread over
    the GPUs before they share one. Returns None, touching nothing, under SLURM or with no GPU. A
    slot directory that cannot be created or locked in is an ``InputError``.
    """
    global _held
    if os.environ.get("SLURM_JOB_ID"):
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("acquire() must run before CUDA is initialised in this process")
    ids = gpu_ids()
    if not ids:
        return None
    waiting = False
    while (taken := _take_least_loaded(Path(slot_dir), ids, jobs_per_gpu)) is None:
        if not waiting:
            log.info(
                "all %d GPU slots (%d GPUs x %d) are taken: waiting", len(ids) * jobs_per_gpu, len(ids), jobs_per_gpu
            )
            waiting = True
        time.sleep(POLL_S)
    gpu, _held = taken
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def acquire_from_env() -> str | None:
    """``acquire()`` with the slot directory and jobs per GPU of ``SLOTS_ENV`` and ``JOBS_PER_GPU_ENV``.

    What a GPU rule's script calls (through ``run_cli(main, gpu=True)``); a no-op returning None
    when ``SLOTS_ENV`` is unset (a script run outside the workflow). A ``JOBS_PER_GPU_ENV`` that
    is not an integer >= 1 is an ``InputError``.
    """
    slot_dir = os.environ.get(SLOTS_ENV)
    if not slot_dir:
        return None
    jobs = os.environ.get(JOBS_PER_GPU_ENV, "")
    if not jobs.isdigit() or int(jobs) < 1:
        raise InputError(JOBS_PER_GPU_ENV, f"must be an integer >= 1, not {jobs!r}")
    return acquire(slot_dir, int(jobs))


def _take_least_loaded(slot_dir: Path, ids: list[str], jobs_per_gpu: int):
    """``(GPU id, open locked slot file)`` of a free slot on the least loaded GPU, or None if none is free.

    Runs under ``pool.lock``, so that jobs choosing at the same time choose one after another:
    every free slot is locked for the count, then all but the chosen one are let go.
    """
    try:
        slot_dir.mkdir(parents=True, exist_ok=True)
        with open(slot_dir / "pool.lock", "a") as pool:
            fcntl.flock(pool, fcntl.LOCK_EX)
            free = {
                gpu: [f for k in range(jobs_per_gpu) if (f := _try_lock(slot_dir / f"gpu{gpu}.{k}.lock"))]
                for gpu in ids
            }
            best = max(ids, key=lambda gpu: len(free[gpu]))  # most free slots = fewest taken; the first on ties
            keep = free[best].pop() if free[best] else None
            for files in free.values():
                for f in files:
                    f.close()
    except OSError as err:
        raise InputError(slot_dir, f"cannot take a GPU slot here: {err.strerror or err}") from None
    return None if keep is None else (best, keep)


def _try_lock(path: Path):
    """``path`` opened and exclusively locked, or None if another process holds it."""
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f
