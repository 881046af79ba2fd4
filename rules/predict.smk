# Inference: low-resolution logits for every expression of an evaluation split.


# Logits at S/8 (fp32) per expression; upsampling and thresholding are deterministic and
# documented in the file's attributes, so the prediction at original size can be rebuilt.
rule predict:
    input:
        model=results("models/{dataset}/{backbone}_{fusion}/model.pt"),
        cache=results("cache/{dataset}/{split}.h5"),
    output:
        results("predictions/{dataset}/{backbone}_{fusion}/{split}.h5"),
    log:
        results("logs/predict/{dataset}/{backbone}_{fusion}/{split}.log"),
    benchmark:
        results("benchmarks/predict/{dataset}/{backbone}_{fusion}/{split}.tsv")
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        batch_size=config["predict"]["batch_size"],
    shell:
        "python -m workflow_scripts.predict --model {input.model} --cache {input.cache}"
        " --batch-size {params.batch_size} --threads {threads} --out {output} > {log} 2>&1"
