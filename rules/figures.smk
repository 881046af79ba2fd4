# Figures: per-word progression (paper Fig. 1/5), mLSTM response maps (Fig. 6), a qualitative
# grid (Fig. 7) and the training curves; all marked for the Snakemake report.


# Progression and response maps for a deterministic sample of expressions of figures.split
# (plus the longest ones), and the qualitative grid of the best model with DenseCRF if enabled.
rule figures:
    input:
        unpack(figure_inputs),
    output:
        progression=report(
            expand(
                results("figures/{{dataset}}/{{backbone}}/progression_{i}.png"),
                i=range(N_FIGURE_EXPRESSIONS),
            ),
            caption="../report/progression.rst",
            category="Figures",
            subcategory="{dataset}: per-word progression",
        ),
        response=report(
            expand(
                results("figures/{{dataset}}/{{backbone}}/response_{i}.png"),
                i=range(N_FIGURE_EXPRESSIONS),
            ),
            caption="../report/response.rst",
            category="Figures",
            subcategory="{dataset}: mLSTM response maps",
        ),
        qualitative=report(
            results("figures/{dataset}/{backbone}/qualitative.png"),
            caption="../report/qualitative.rst",
            category="Figures",
            subcategory="{dataset}: qualitative results",
        ),
    log:
        results("logs/figures/{dataset}/{backbone}.log"),
    conda:
        "../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        figures=json.dumps(config["figures"], sort_keys=True),
        crf=crf_params(),
        label=figure_label,
    shell:
        "python -m workflow_scripts.figures --cache {input.cache}"
        " --lstm {input.lstm} --rmi {input.rmi} --prediction {input.prediction}"
        " --label {params.label:q} --crf {params.crf:q} --params {params.figures:q}"
        " --progression {output.progression} --response {output.response}"
        " --qualitative {output.qualitative} > {log} 2>&1"


# Loss and learning rate against the step, from the training log.
rule loss_curve:
    input:
        results("models/{dataset}/{backbone}_{fusion}/train_log.csv"),
    output:
        report(
            results("figures/{dataset}/{backbone}_{fusion}_loss.png"),
            caption="../report/loss_curve.rst",
            category="Training curves",
            subcategory="{dataset}",
        ),
    log:
        results("logs/loss_curve/{dataset}/{backbone}_{fusion}.log"),
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m workflow_scripts.loss_curve --log {input}"
        " --title '{wildcards.dataset}: {wildcards.backbone}+{wildcards.fusion}' --out {output} > {log} 2>&1"
