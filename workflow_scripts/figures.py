"""Per-word progression, mLSTM response maps and the qualitative grid of one backbone (rule figures)."""

import argparse
import json
import logging
from pathlib import Path

from rmi.cli.common import run_cli
from rmi.crf import CRFParams
from rmi.data.cache import CacheReader
from rmi.figures import progression, qualitative_grid, response_maps, select_expressions
from rmi.model_file import load_model
from rmi.prediction_file import PredictionReader

log = logging.getLogger("figures")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache", required=True, type=Path, help="the split's cache")
    p.add_argument("--lstm", required=True, type=Path, help="model.pt of the LSTM baseline")
    p.add_argument("--rmi", required=True, type=Path, help="model.pt of RMI")
    p.add_argument("--prediction", required=True, type=Path, help="the RMI(+DCRF) predictions of the split")
    p.add_argument("--label", required=True, help="what the prediction is, e.g. T+RMI+DCRF")
    p.add_argument("--crf", required=True, help="JSON: DenseCRF settings for the response maps")
    p.add_argument("--params", required=True, help="JSON: the config's figures block")
    p.add_argument("--progression", required=True, type=Path, nargs="+")
    p.add_argument("--response", required=True, type=Path, nargs="+")
    p.add_argument("--qualitative", required=True, type=Path)
    a = p.parse_args(argv)
    params = json.loads(a.params)
    cache = CacheReader(a.cache)
    models = {"LSTM": load_model(a.lstm)[0], "RMI": load_model(a.rmi)[0]}
    rows = select_expressions(cache, params["n_progression"], params["n_long"], params["seed"])
    if len(rows) != len(a.progression) or len(rows) != len(a.response):
        raise SystemExit(f"{len(rows)} expressions selected but {len(a.progression)} output files given")
    crf = CRFParams.from_dict(json.loads(a.crf))
    for row, prog, resp in zip(rows, a.progression, a.response, strict=True):
        log.info("expression %d: %s", int(cache.sent_id[row]), cache.sentence(row))
        progression(models, cache, row, prog)
        response_maps(models["RMI"], cache, row, crf, resp)
    grid_rows = select_expressions(cache, params["n_qualitative"], 0, params["seed"] + 1)
    with PredictionReader(a.prediction) as pred:
        qualitative_grid(cache, grid_rows, {a.label: pred}, a.qualitative)


if __name__ == "__main__":
    run_cli(main)
