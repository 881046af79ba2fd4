# Data stage: generated datasets, vocabulary, and the per-split HDF5 cache.


# Render a generated dataset (shapes / shapes+) in the RefCOCO file layout.
rule generate_shapes:
    output:
        refs=results("data/{dataset}/refs(unc).p"),
        instances=results("data/{dataset}/instances.json"),
        images=directory(results("data/{dataset}/images")),
    log:
        results("logs/generate_shapes/{dataset}.log"),
    benchmark:
        results("benchmarks/generate_shapes/{dataset}.tsv")
    conda:
        "../envs/data.yaml"
    # images are drawn in parallel, each from its own seed: the files do not depend on the threads
    # (Snakemake caps them at --cores; 2 left the paper-size set at 80 s on a 16-core machine)
    threads: 8
    params:
        generator=lambda wildcards: json.dumps(
            dataset_cfg(wildcards)["generator"], sort_keys=True
        ),
        out_dir=lambda wildcards, output: os.path.dirname(output.refs),
        version=SHAPES_VERSION,
    shell:
        "python -m workflow_scripts.generate_shapes --params {params.generator:q}"
        " --out-dir {params.out_dir:q} --threads {threads} > {log} 2>&1"


# Vocabulary of the training split: <pad> <go> <eos> <unk>, then words by frequency.
rule vocab:
    input:
        unpack(raw_inputs),
    output:
        results("cache/{dataset}/vocab.txt"),
    log:
        results("logs/vocab/{dataset}.log"),
    conda:
        "../envs/data.yaml"
    params:
        source=lambda wildcards: json.dumps(
            dataset_source(wildcards.dataset), sort_keys=True
        ),
        split=lambda wildcards: dataset_cfg(wildcards)["train_split"],
        min_count=config["vocab_min_count"],
    shell:
        "python -m workflow_scripts.build_vocab --source {params.source:q} --split {params.split}"
        " --min-count {params.min_count} --out {output} > {log} 2>&1"


# One split in HDF5: padded images once per image, token ids, masks, original-size RLE.
rule cache:
    input:
        unpack(raw_inputs),
        vocab=results("cache/{dataset}/vocab.txt"),
    output:
        results("cache/{dataset}/{split}.h5"),
    log:
        results("logs/cache/{dataset}/{split}.log"),
    benchmark:
        results("benchmarks/cache/{dataset}/{split}.tsv")
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        source=lambda wildcards: json.dumps(
            dataset_source(wildcards.dataset), sort_keys=True
        ),
        image_size=config["image_size"],
        max_tokens=config["max_tokens"],
        role=lambda wildcards: (
            "train"
            if wildcards.split == dataset_cfg(wildcards)["train_split"]
            else "eval"
        ),
    shell:
        "python -m workflow_scripts.build_cache --source {params.source:q} --split {wildcards.split}"
        " --vocab {input.vocab} --image-size {params.image_size} --max-tokens {params.max_tokens}"
        " --dataset {wildcards.dataset} --role {params.role} --out {output} > {log} 2>&1"
