# Config validation, wildcard constraints and input functions shared by every stage.
#
# Paths: every file a rule writes lives under the config's `results_dir` (`results()` below), so
# the outputs of two configs never stand in for each other; raw downloads stay in data/.
import ast
import json
import os
import re
import sys

from snakemake.utils import validate

# Also fills every default of the schema, nested ones included: nothing downstream repeats them.
validate(config, schema="../config/schema.yaml")

# Scripts import the `rmi` package from this checkout, also in conda envs and on SLURM nodes,
# and `python` is the interpreter running Snakemake unless a conda env of a rule comes first.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in [workflow.basedir, os.environ.get("PYTHONPATH", "")] if p
    ),
    PATH=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)]
    ),
)

RESULTS = config["results_dir"]


# The generated sets' version (a params of generate_shapes): bumped in rmi/data/shapes.py, it draws
# them again. Read from the module's source: importing it would slow every Snakemake start.
with open(
    os.path.join(str(workflow.current_basedir), "..", "rmi", "data", "shapes.py")
) as f:
    SHAPES_VERSION = next(
        ast.literal_eval(node.value)
        for node in ast.parse(f.read()).body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["SHAPES_VERSION"]
    )


def results(path):
    """``path`` (may hold wildcards) under this config's results directory."""
    return f"{RESULTS}/{path}"


# GPU slots of local runs (rmi.gpu_slots): a GPU rule's script takes one of the jobs_per_gpu slots
# of a GPU and runs on that GPU alone. Environment, not params: the GPU a job ran on changes no output.
os.environ.update(
    RMI_GPU_SLOTS=os.path.abspath(results(".gpu_slots")),
    RMI_JOBS_PER_GPU=str(config["jobs_per_gpu"]),
)


DATASETS = list(config["datasets"])
BACKBONES = list(config["backbones"])
FUSIONS = list(config["fusions"])
FUSION_MODELS = [f"{b}_{f}" for b in BACKBONES for f in FUSIONS]
MODELS = FUSION_MODELS + (
    [f"{m}_dcrf" for m in FUSION_MODELS] if config["crf"]["enabled"] else []
)


def _alternatives(names):
    return "|".join(map(re.escape, names))


def _check_config():
    """Cross-field checks the JSON schema cannot express; each error names the key."""
    for name, ds in config["datasets"].items():
        if ds["train_split"] in ds["eval_splits"]:
            raise ValueError(
                f"config: datasets.{name}: train split {ds['train_split']!r} is also an eval split"
            )
        if ds["format"] == "shapes":
            missing = {ds["train_split"], *ds["eval_splits"]} - set(
                ds["generator"]["images"]
            )
            if missing:
                raise ValueError(
                    f"config: datasets.{name}.generator.images lacks splits {sorted(missing)}"
                )
        for dl in ds["downloads"]:
            if dl not in config["downloads"]:
                raise ValueError(
                    f"config: datasets.{name}.downloads names {dl!r}, not in downloads"
                )
    if config["train"]["length_buckets"] and config["train"]["group_by_image"]:
        raise ValueError(
            "config: train.length_buckets and train.group_by_image exclude each other"
        )
    lockstep = config["train"]["lockstep"]
    for name, bb in config["backbones"].items():
        if lockstep and not bb["freeze_trunk"]:
            raise ValueError(
                f"config: backbones.{name}.freeze_trunk: train.lockstep shares one frozen trunk per backbone"
            )
        random_trunks = not (bb["pretrained"] or bb["weights_path"])
        if (
            lockstep
            and random_trunks
            and len(config["datasets"]) * len(config["fusions"]) > 1
        ):
            raise ValueError(
                f"config: backbones.{name}.pretrained: train.lockstep shares one trunk, not one random trunk per training"
            )
    for table, spec in config["tables"]["length"].items():
        ds = config["datasets"].get(spec["dataset"])
        if ds is None or spec["split"] not in ds["eval_splits"]:
            raise ValueError(
                f"config: tables.length.{table}: {spec['dataset']} {spec['split']} is not an evaluated split"
            )


_check_config()


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    backbone=_alternatives(BACKBONES),
    fusion=_alternatives(FUSIONS),
    model=_alternatives(MODELS),
    split="[A-Za-z0-9]+",
    download=_alternatives(config["downloads"]),


def dataset_cfg(wildcards):
    return config["datasets"][wildcards.dataset]


def dataset_source(name):
    """The loader spec of a dataset (JSON-able); generated sets are read as RefCOCO."""
    ds = config["datasets"][name]
    if ds["format"] == "shapes":
        return {
            "format": "refer",
            "refer_dir": results(f"data/{name}"),
            "split_by": "unc",
            "image_dir": results(f"data/{name}/images"),
            "sentence_field": "sent",
        }
    keys = (
        ("refer_dir", "split_by", "image_dir", "sentence_field")
        if ds["format"] == "refer"
        else ("query_dir", "image_dir", "mask_dir")
    )
    return {"format": ds["format"], **{k: ds[k] for k in keys if k in ds}}


def raw_inputs(wildcards):
    """What the loaders read for wildcards.dataset (see dataset_files)."""
    return dataset_files(wildcards.dataset)


def dataset_files(name):
    """What the loaders read: the generated files, or the downloaded directories."""
    ds = config["datasets"][name]
    if ds["format"] == "shapes":
        return {
            "refs": results(f"data/{name}/refs(unc).p"),
            "instances": results(f"data/{name}/instances.json"),
            "images": results(f"data/{name}/images"),
        }
    return {dl: f"data/{dl}" for dl in ds["downloads"]}


def train_cache(wildcards):
    return train_cache_of(wildcards.dataset)


def train_cache_of(dataset):
    split = config["datasets"][dataset]["train_split"]
    return results(f"cache/{dataset}/{split}.h5")


def backbone_cfg(wildcards):
    return config["backbones"][wildcards.backbone]


def weights_input(wildcards):
    """Pretrained weights of a backbone: its weights_path, else written by rule pretrain_backbone (a
    backbone with a `pretrain` block) or fetched by rule fetch_weights (R, D; torchvision weights).
    """
    bb = backbone_cfg(wildcards)
    if not bb["pretrained"]:
        return []
    if bb["weights_path"]:
        return bb["weights_path"]
    if bb["pretrain"]:
        return results(f"weights/{wildcards.backbone}.pth")
    return f"data/weights/{wildcards.backbone}.pth"


def pretrain_sources():
    """The training split of every generated dataset, as the dense pretraining reads them (JSON-able)."""
    return [
        {**dataset_source(name), "split": ds["train_split"]}
        for name, ds in config["datasets"].items()
        if ds["format"] == "shapes"
    ]


def pretrain_inputs(wildcards):
    """The generated files of every source, which pretrain_backbone reads (training images only are used)."""
    return [
        path
        for name, ds in config["datasets"].items()
        if ds["format"] == "shapes"
        for path in dataset_files(name).values()
    ]


def feature_input(wildcards):
    return features_of(wildcards.dataset, wildcards.backbone) or []


def features_of(dataset, backbone):
    """The training split's cached trunk features, or None (no feature cache, or a trainable trunk)."""
    if not config["train"]["feature_cache"]:
        return None
    if not config["backbones"][backbone]["freeze_trunk"]:
        return None
    split = config["datasets"][dataset]["train_split"]
    return results(f"features/{dataset}/{backbone}/{split}.h5")


def train_priority(wildcards):
    """Trainings start before predictions, DenseCRF and evaluations, and RMI's (about 2.5 times the
    LSTM baseline's time) before the LSTM's, so that the DAG does not end waiting on one of them.
    """
    return 51 if wildcards.fusion == "rmi" else 50


def train_params(wildcards):
    """Everything that changes the trained weights (a change reruns training), as JSON."""
    return json.dumps(
        train_hparams(wildcards.backbone, wildcards.fusion), sort_keys=True
    )


def train_hparams(backbone, fusion):
    """The hparams of a training (``rmi.train``); not the settings that only change how it runs."""
    return {
        "seed": config["seed"],
        "image_size": config["image_size"],
        "backbone": backbone,
        "fusion": fusion,
        "backbone_cfg": {
            k: v
            for k, v in config["backbones"][backbone].items()
            if k not in ("letter", "weights_url")
        },
        "model": config["model"],
        "train": {
            k: v
            for k, v in config["train"].items()
            if k not in ("checkpoint_every", "lockstep")
        },
    }


def checkpoint_interval(wildcards, output):
    """The training rules' checkpoint interval. It does not change the weights: a function of
    `output` is a "derived" param, which Snakemake does not count as a rerun trigger."""
    return config["train"]["checkpoint_every"]


def lockstep_members(backbone):
    """Every training of a backbone (datasets x fusions) as rule train_lockstep passes them (JSON-able)."""
    return [
        {
            "cache": train_cache_of(dataset),
            "vocab": results(f"cache/{dataset}/vocab.txt"),
            "features": features_of(dataset, backbone),
            "hparams": train_hparams(backbone, fusion),
            "out_model": results(f"models/{dataset}/{backbone}_{fusion}/model.pt"),
            "out_log": results(f"models/{dataset}/{backbone}_{fusion}/train_log.csv"),
        }
        for dataset in DATASETS
        for fusion in FUSIONS
    ]


def lockstep_inputs(wildcards):
    """The inputs of train_lockstep (every member's cache, vocabulary and features, the trunk's weights)."""
    members = lockstep_members(wildcards.backbone)
    files = {
        k: list(dict.fromkeys(m[k] for m in members if m[k]))
        for k in ("cache", "vocab", "features")
    }
    return {**files, "weights": weights_input(wildcards)}


def crf_params():
    return json.dumps(
        {k: v for k, v in config["crf"].items() if k != "enabled"}, sort_keys=True
    )


def metric_files():
    """``{dataset: {split: {model: csv}}}``, every evaluated split in config order."""
    return {
        d: {
            s: {m: results(f"metrics/{d}/{m}/{s}.csv") for m in MODELS}
            for s in ds["eval_splits"]
        }
        for d, ds in config["datasets"].items()
    }


def baseline_splits():
    """Every evaluated split with its cache and loader spec (what rule baselines scores)."""
    return [
        {
            "dataset": d,
            "split": s,
            "cache": results(f"cache/{d}/{s}.h5"),
            "source": dataset_source(d),
        }
        for d, ds in config["datasets"].items()
        for s in ds["eval_splits"]
    ]


def baseline_inputs(wildcards):
    """The caches of every evaluated split and the raw files their instance annotations come from."""
    files = {f"cache_{i}": s["cache"] for i, s in enumerate(baseline_splits())}
    for name in DATASETS:
        files.update({f"{name}_{k}": v for k, v in dataset_files(name).items()})
    return files


def metric_csvs():
    """The files of ``metric_files()`` as a list (the tables' inputs)."""
    return [
        path
        for splits in metric_files().values()
        for models in splits.values()
        for path in models.values()
    ]


def table_spec():
    """The table-building settings (JSON): rows, columns, letters, length tables."""
    return json.dumps(
        {
            "datasets": {n: ds["eval_splits"] for n, ds in config["datasets"].items()},
            # pairs, not a dict: sort_keys must not reorder the rows (R before D, as in the paper)
            "backbones": [[b, config["backbones"][b]["letter"]] for b in BACKBONES],
            "fusions": FUSIONS,
            "dcrf": config["crf"]["enabled"],
            "length": config["tables"]["length"],
            "paper": config["tables"]["paper"],
            "thresholds": config["evaluate"]["thresholds"],
            # RefCOCO, RefCOCO+ and RefCOCOg images are COCO train2014 images
            "coco_datasets": [
                n for n, ds in config["datasets"].items() if ds["format"] == "refer"
            ],
        },
        sort_keys=True,
    )


def table_outputs(for_report=False):
    """The tables' files; ``for_report`` wraps them with report() (category Tables)."""
    names = ["table1.csv", "table1.md", "precision.csv"]
    names += [f"{t}.csv" for t in config["tables"]["length"]]
    if config["tables"]["paper"]:
        names.append("table1_vs_paper.csv")
    out = [results(name) for name in names]
    if not for_report:
        return out
    captions = {
        "table1.csv": "table1",
        "precision.csv": "precision",
        "table1_vs_paper.csv": "vs_paper",
    }
    mark = report  # (a line may not start with `report` outside the report: directive)
    return [
        (
            mark(
                path,
                caption=f"../report/{captions.get(os.path.basename(path), 'length')}.rst",
                category="Tables",
            )
            if not path.endswith(".md")
            else path
        )
        for path in out
    ]


N_FIGURE_EXPRESSIONS = config["figures"]["n_progression"] + config["figures"]["n_long"]


def figure_inputs(wildcards):
    """Both fusions of a backbone, the figure split's cache and RMI's (+DCRF) predictions."""
    split = config["figures"]["split"]
    rmi = f"{wildcards.backbone}_rmi" + ("_dcrf" if config["crf"]["enabled"] else "")
    prefix = results(f"models/{wildcards.dataset}/{wildcards.backbone}")
    return {
        "lstm": f"{prefix}_lstm/model.pt",
        "rmi": f"{prefix}_rmi/model.pt",
        "cache": results(f"cache/{wildcards.dataset}/{split}.h5"),
        "prediction": results(f"predictions/{wildcards.dataset}/{rmi}/{split}.h5"),
    }


def figure_label(wildcards):
    """The row label of the figures' model, e.g. ``R+RMI+DCRF``."""
    parts = [config["backbones"][wildcards.backbone]["letter"], "RMI"]
    if config["crf"]["enabled"]:
        parts.append("DCRF")
    return "+".join(parts)


def figure_targets():
    """Figures of every dataset whose figure split is evaluated; loss curves of every model."""
    if not config["figures"]["enabled"]:
        return []
    out = [
        results(f"figures/{d}/{b}_{f}_loss.png")
        for d in DATASETS
        for b in BACKBONES
        for f in FUSIONS
    ]
    if set(FUSIONS) == {"lstm", "rmi"}:
        out += [
            results(f"figures/{d}/{b}/qualitative.png")
            for d in DATASETS
            for b in BACKBONES
            if config["figures"]["split"] in config["datasets"][d]["eval_splits"]
        ]
    return out


def all_targets():
    return table_outputs() + figure_targets() + [results("baselines.csv")]
