# Training stage: optional trunk-feature cache, then one model per (dataset, backbone, fusion).


# Frozen-trunk features (fp16 HDF5) computed once per image and shared by both fusions.
rule extract_features:
    input:
        cache="results/cache/{dataset}/{split}.h5",
        weights=weights_input,
    output:
        "results/features/{dataset}/{backbone}/{split}.h5",
    params:
        backbone=lambda wildcards: json.dumps(backbone_cfg(wildcards)),
        visual_dim=config["model"]["visual_dim"],
    log:
        "logs/extract_features/{dataset}/{backbone}/{split}.log",
    benchmark:
        "results/benchmarks/extract_features/{dataset}/{backbone}/{split}.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    conda:
        "../envs/train.yaml"
    shell:
        "python workflow_scripts/extract_features.py --cache {input.cache} --backbone {wildcards.backbone}"
        " --backbone-cfg {params.backbone:q} --threads {threads} --out {output} > {log} 2>&1"


# Train LSTM baseline or RMI. Checkpoints live in an undeclared directory so that a killed or
# preempted job resumes (Snakemake deletes declared outputs before a rerun); SIGTERM saves one.
rule train:
    input:
        cache=train_cache,
        vocab="results/cache/{dataset}/vocab.txt",
        weights=weights_input,
        features=feature_input,
    output:
        model="results/models/{dataset}/{backbone}_{fusion}/model.pt",
        log_csv="results/models/{dataset}/{backbone}_{fusion}/train_log.csv",
    params:
        hparams=train_params,
        checkpoint_dir="results/checkpoints/{dataset}/{backbone}_{fusion}",
        checkpoint_every=config["train"].get("checkpoint_every", 1000),
    log:
        "logs/train/{dataset}/{backbone}_{fusion}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{backbone}_{fusion}.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=1440,
    conda:
        "../envs/train.yaml"
    shell:
        "python workflow_scripts/train.py --cache {input.cache} --vocab {input.vocab}"
        " --hparams {params.hparams:q} --features '{input.features}' --weights '{input.weights}'"
        " --checkpoint-dir {params.checkpoint_dir} --checkpoint-every {params.checkpoint_every}"
        " --threads {threads} --out-model {output.model} --out-log {output.log_csv} > {log} 2>&1"
