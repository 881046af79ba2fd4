"""Train every model of one backbone in lockstep in one process (rule train_lockstep); resumes from checkpoints."""

import argparse
import json
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.lockstep import LockstepJob, run
from rmi.train import TrainSpec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--members",
        required=True,
        help="JSON list, per training: cache, vocab, features (null: run the trunk), hparams, out_model, out_log",
    )
    p.add_argument("--weights", default="", help="pretrained backbone weights file ('' = none/torchvision)")
    p.add_argument("--checkpoint-dir", required=True, type=Path)
    p.add_argument("--checkpoint-every", required=True, type=int, help="steps between checkpoints")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--workers", type=int, default=None, help="DataLoader worker processes (default: --threads on CUDA, 0 on CPU)"
    )
    p.add_argument("--device", default=None, help="cuda | cpu | cuda:1 (default: cuda if available)")
    a = p.parse_args(argv)
    run(
        LockstepJob(
            members=[TrainSpec(**m, weights_path=a.weights or None) for m in json.loads(a.members)],
            checkpoint_dir=a.checkpoint_dir,
            checkpoint_every=a.checkpoint_every,
            threads=a.threads,
            device=a.device,
            workers=a.workers,
        )
    )


if __name__ == "__main__":
    run_cli(main, gpu=True)
