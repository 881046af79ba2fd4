# rmi-pipeline: the RMI paper's results grid (Liu et al., ICCV 2017) as one DAG.
#   snakemake --cores 2 results/table1.csv                                 (embedded demo)
#   snakemake --profile profiles/slurm --configfile=config/paper.yaml results/paper/table1.csv
# Every file a rule writes lives under the config's results_dir (demo: results/).
from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


# The embedded demo config, unless --configfile names another (which then REPLACES it rather
# than being merged into it: the paper grid must not inherit the demo's datasets).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/densecrf.smk"
include: "rules/evaluate.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"


localrules:
    all,
    download,
    fetch_weights,
    tables,


# Tables and figures for every dataset, backbone and fusion in the config.
rule all:
    default_target: True
    input:
        all_targets(),
