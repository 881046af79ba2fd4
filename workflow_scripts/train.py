"""Train the LSTM baseline or RMI on one cached dataset (rule train); resumes from checkpoints."""

import argparse
import json
from pathlib import Path

from rmi.cli.common import add_training_arguments, run_cli
from rmi.train import TrainJob, run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache", required=True, type=Path, help="training split cache (.h5)")
    p.add_argument("--vocab", required=True, type=Path)
    p.add_argument(
        "--hparams", required=True, help="JSON: seed, image_size, backbone, fusion, backbone_cfg, model, train"
    )
    p.add_argument("--features", default="", help="cached trunk features (.h5, '' = compute the trunk)")
    add_training_arguments(p)
    p.add_argument("--out-model", required=True, type=Path)
    p.add_argument("--out-log", required=True, type=Path)
    a = p.parse_args(argv)
    run(
        TrainJob(
            cache=a.cache,
            vocab=a.vocab,
            hparams=json.loads(a.hparams),
            out_model=a.out_model,
            out_log=a.out_log,
            checkpoint_dir=a.checkpoint_dir,
            checkpoint_every=a.checkpoint_every,
            threads=a.threads,
            weights_path=a.weights or None,
            features=Path(a.features) if a.features else None,
            device=a.device,
            workers=a.workers,
        )
    )


if __name__ == "__main__":
    run_cli(main, gpu=True)
