# DenseCRF refinement (CPU): the official parameters on the S x S probabilities and the padded
# RGB image. Only this rule reads the CRF settings, so changing one reruns CRF, evaluation and
# tables, never training or inference.


rule densecrf:
    input:
        pred=results("predictions/{dataset}/{backbone}_{fusion}/{split}.h5"),
        cache=results("cache/{dataset}/{split}.h5"),
    output:
        results("predictions/{dataset}/{backbone}_{fusion}_dcrf/{split}.h5"),
    log:
        results("logs/densecrf/{dataset}/{backbone}_{fusion}/{split}.log"),
    benchmark:
        results("benchmarks/densecrf/{dataset}/{backbone}_{fusion}/{split}.tsv")
    conda:
        "../envs/eval.yaml"
    # in-process on one core; the profiles give it a process pool (large splits)
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        crf=crf_params(),
    shell:
        "python -m workflow_scripts.densecrf --pred {input.pred} --cache {input.cache}"
        " --params {params.crf:q} --threads {threads} --out {output} > {log} 2>&1"
