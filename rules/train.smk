# Training stage: optional trunk-feature cache, then one model per (dataset, backbone, fusion).


# Pretraining of a trunk on the TRAINING images of every generated dataset, once per backbone, where
# no weights can be downloaded: dense labels (shape category and colour per pixel) for tiny and
# deeplab101 (D, as DeepLab's trunk was made), image-level labels (which categories and colours
# appear) for resnet101 (R, as ImageNet's was). train then loads it frozen, as the paper freezes its
# trunks. Reads no val/test image and no referring expression.
rule pretrain_backbone:
    input:
        pretrain_inputs,
    output:
        results("weights/{backbone}.pth"),
    log:
        results("logs/pretrain_backbone/{backbone}.log"),
    benchmark:
        results("benchmarks/pretrain_backbone/{backbone}.tsv")
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        sources=json.dumps(pretrain_sources(), sort_keys=True),
        widths=lambda wildcards: json.dumps(backbone_cfg(wildcards).get("widths")),
        pretrain=lambda wildcards: json.dumps(
            backbone_cfg(wildcards)["pretrain"], sort_keys=True
        ),
        image_size=config["image_size"],
        seed=config["seed"],
    shell:
        "python -m workflow_scripts.pretrain_backbone --backbone {wildcards.backbone}"
        " --sources {params.sources:q} --widths {params.widths:q}"
        " --image-size {params.image_size} --params {params.pretrain:q} --seed {params.seed}"
        " --threads {threads} --out {output} > {log} 2>&1"


# Frozen-trunk features (fp16 HDF5) of the training split, computed once and shared by both
# fusions of a backbone; only used when train.feature_cache is true.
rule extract_features:
    input:
        cache=results("cache/{dataset}/{split}.h5"),
        weights=weights_input,
    output:
        results("features/{dataset}/{backbone}/{split}.h5"),
    log:
        results("logs/extract_features/{dataset}/{backbone}/{split}.log"),
    benchmark:
        results("benchmarks/extract_features/{dataset}/{backbone}/{split}.tsv")
    # before any training starts: every training waits for its dataset's features
    priority: 60
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        backbone_cfg=lambda wildcards: json.dumps(
            backbone_cfg(wildcards), sort_keys=True
        ),
        visual_dim=config["model"]["visual_dim"],
    shell:
        "python -m workflow_scripts.extract_features --cache {input.cache}"
        " --backbone {wildcards.backbone} --backbone-cfg {params.backbone_cfg:q}"
        " --visual-dim {params.visual_dim} --weights={input.weights} --threads {threads}"
        " --out {output} > {log} 2>&1"


if not config["train"]["lockstep"]:

    # Train the LSTM baseline or RMI. Checkpoints go to <results_dir>/checkpoints/ (not an output, so
    # a killed, preempted or requeued job resumes from them).
    rule train:
        input:
            cache=train_cache,
            vocab=results("cache/{dataset}/vocab.txt"),
            weights=weights_input,
            features=feature_input,
        output:
            model=results("models/{dataset}/{backbone}_{fusion}/model.pt"),
            log=results("models/{dataset}/{backbone}_{fusion}/train_log.csv"),
        log:
            results("logs/train/{dataset}/{backbone}_{fusion}.log"),
        benchmark:
            results("benchmarks/train/{dataset}/{backbone}_{fusion}.tsv")
        # trainings are the long jobs: start them before predictions, DenseCRF and evaluations, RMI's first
        priority: train_priority
        conda:
            "../envs/train.yaml"
        # One thread: on CPUs two one-thread trainings side by side finish sooner than two-thread ones
        # in turn (the tiny model's operations are small); the profiles raise it (DataLoader workers).
        threads: 1
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=2880,
        params:
            hparams=train_params,
            checkpoint_dir=results("checkpoints/{dataset}/{backbone}_{fusion}"),
            checkpoint_every=checkpoint_interval,
        shell:
            "python -m workflow_scripts.train --cache {input.cache}"
            " --vocab {input.vocab} --hparams {params.hparams:q} --weights={input.weights}"
            " --features={input.features} --checkpoint-dir {params.checkpoint_dir}"
            " --checkpoint-every {params.checkpoint_every} --threads {threads}"
            " --out-model {output.model} --out-log {output.log} > {log} 2>&1"

else:

    # Every training of a backbone (datasets x fusions) in one process, each as it would train
    # alone (rmi.lockstep): one job per backbone writes every member's model and log. Its checkpoint
    # goes to <results_dir>/checkpoints/lockstep/ (train.lockstep: true, see config/schema.yaml).
    rule train_lockstep:
        input:
            unpack(lockstep_inputs),
        output:
            models=expand(
                results("models/{dataset}/{{backbone}}_{fusion}/model.pt"),
                dataset=DATASETS,
                fusion=FUSIONS,
            ),
            logs=expand(
                results("models/{dataset}/{{backbone}}_{fusion}/train_log.csv"),
                dataset=DATASETS,
                fusion=FUSIONS,
            ),
        log:
            results("logs/train_lockstep/{backbone}.log"),
        benchmark:
            results("benchmarks/train_lockstep/{backbone}.tsv")
        priority: 50
        conda:
            "../envs/train.yaml"
        threads: 1
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=2880,
        params:
            members=lambda wildcards: json.dumps(
                lockstep_members(wildcards.backbone), sort_keys=True
            ),
            checkpoint_dir=results("checkpoints/lockstep/{backbone}"),
            checkpoint_every=checkpoint_interval,
        shell:
            "python -m workflow_scripts.train_lockstep --members {params.members:q}"
            " --weights={input.weights} --checkpoint-dir {params.checkpoint_dir}"
            " --checkpoint-every {params.checkpoint_every} --threads {threads} > {log} 2>&1"
