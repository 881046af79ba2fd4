"""What every ``workflow_scripts/*.py`` shares: logging to stderr and one-line input errors.

A script is ``def main(argv=None)`` (argparse reads ``sys.argv`` when ``argv`` is None) and
ends with ``if __name__ == "__main__": run_cli(main)``, ``run_cli(main, gpu=True)`` for the
scripts of the GPU rules. Rules redirect stderr into their ``log:`` file, so everything a script
reports lands there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from rmi import gpu_slots
from rmi.errors import InputError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_cli(main: Callable[[list[str] | None], None], gpu: bool = False, level: int = logging.INFO) -> None:
    """Set up logging (``level``, stderr) and call ``main(None)``.

    ``gpu``: first take a GPU slot (``rmi.gpu_slots.acquire_from_env``: under the workflow, outside
    SLURM, on a machine with GPUs), so that ``main`` runs on the one GPU of the slot.

    A ``rmi.errors.InputError`` (bad user input: a missing or corrupt file, a checksum
    mismatch...) is printed as one line ``error: <where>: <problem>`` on stderr and the process
    exits with status 1; any other exception is a bug and keeps its traceback.
    """
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    logging.captureWarnings(True)
    try:
        if gpu:
            gpu_slots.acquire_from_env()
        main(None)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the training scripts (rules train, train_lockstep) share: trunk weights, checkpoints,
    threads, DataLoader workers and device."""
    parser.add_argument("--weights", default="", help="pretrained backbone weights file ('' = none/torchvision)")
    parser.add_argument("--checkpoint-dir", required=True, type=Path)
    parser.add_argument("--checkpoint-every", required=True, type=int, help="steps between checkpoints")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader worker processes (default: --threads on CUDA, 0 on CPU)"
    )
    parser.add_argument("--device", default=None, help="cuda | cpu | cuda:1 (default: cuda if available)")
