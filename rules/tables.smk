# The paper's tables from the per-expression metrics (pure aggregation).


# Table 1 (overall IoU x 100), precision@X / mean IoU for every model and split, the length
# breakdowns (Tables 2-5) and, for the paper config, the comparison with the published values.
rule tables:
    input:
        csv=metric_files("csv"),
        json=metric_files("json"),
    output:
        table_outputs(for_report=True),
    log:
        "logs/tables/tables.log",
    conda:
        "../envs/eval.yaml"
    params:
        spec=table_spec(),
    shell:
        "python -m workflow_scripts.tables --spec {params.spec:q} --metrics-dir results/metrics"
        " --out-dir results > {log} 2>&1"
