# The paper's tables from the per-expression metrics (pure aggregation).


# Table 1 (overall IoU x 100), precision@X / mean IoU for every model and split, the length
# breakdowns (Tables 2-5) and, for the paper config, the comparison with the published values.
rule tables:
    input:
        metric_csvs(),
    output:
        table_outputs(for_report=True),
    log:
        results("logs/tables/tables.log"),
    conda:
        "../envs/eval.yaml"
    params:
        spec=table_spec(),
        metrics=json.dumps(metric_files()),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "python -m workflow_scripts.tables --spec {params.spec:q} --metrics {params.metrics:q}"
        " --out-dir {params.out_dir:q} > {log} 2>&1"
