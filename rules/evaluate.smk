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
    shell:
        "python -m workflow_scripts.evaluate --pred {input.pred} --cache {input.cache}"
        " --thresholds {params.thresholds} --out-csv {output.csv} --out-json {output.json} > {log} 2>&1"
