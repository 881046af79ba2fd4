"""Train every model of one backbone in lockstep in one process (rule train_lockstep); resumes from checkpoints."""

import argparse
import json

from rmi.cli.common import add_training_arguments, run_cli
from rmi.lockstep import LockstepJob, run
from rmi.train import TrainSpec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--members",
        required=True,
        help="JSON list, per training: cache, vocab, features (null: run the trunk), hparams, out_model, out_log",
    )
    add_training_arguments(p)
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
