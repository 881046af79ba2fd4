# Evaluation at ORIGINAL image resolution: per-expression I and U, then overall IoU, mean IoU
# and precision@X.


rule evaluate:
    input:
        pred=results("predictions/{dataset}/{model}/{split}.h5"),
        cache=results("cache/{dataset}/{split}.h5"),
    output:
        csv=results("metrics/{dataset}/{model}/{split}.csv"),
        json=results("metrics/{dataset}/{model}/{split}.json"),
    log:
        results("logs/evaluate/{dataset}/{model}/{split}.log"),
    conda:
        "../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        thresholds=" ".join(map(str, config["evaluate"]["thresholds"])),
        resize=config["evaluate"]["resize"],
    shell:
        "python -m workflow_scripts.evaluate --pred {input.pred} --cache {input.cache}"
        " --thresholds {params.thresholds} --resize {params.resize}"
        " --out-csv {output.csv} --out-json {output.json} > {log} 2>&1"


# Language-blind baselines of every evaluated split (the largest annotated object of the image; the
# best centred box): the floor a referring model has to clear.
rule baselines:
    input:
        unpack(baseline_inputs),
    output:
        results("baselines.csv"),
    log:
        results("logs/baselines/baselines.log"),
    conda:
        "../envs/eval.yaml"
    params:
        splits=json.dumps(baseline_splits(), sort_keys=True),
        thresholds=" ".join(map(str, config["evaluate"]["thresholds"])),
    shell:
        "python -m workflow_scripts.baselines --splits {params.splits:q}"
        " --thresholds {params.thresholds} --out {output} > {log} 2>&1"
