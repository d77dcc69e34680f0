# affect_pipeline: face videos -> MAE + audio features -> BLB / DCL -> ABAW submission files.
# Usage: snakemake --cores 8 submission          (embedded demo by default)
#        snakemake --cores 8 --configfile my.yaml submission
import os

from snakemake.utils import min_version

min_version("9.0")


# the defaults live beside this file; `--directory` / `--configfile` decide data and results
configfile: os.path.join(workflow.basedir, "workflow_config.yaml")


include: "rules/common.smk"


wildcard_constraints:
    task="AU|EXPR|VA|ERI",
    fold="official|fold[0-9]+",
    video="[^/]+",
    media="[^/]+",
    model="hubert|wav2vec2|vggish",

include: "rules/data.smk"
include: "rules/mae.smk"
include: "rules/features.smk"
include: "rules/temporal.smk"
include: "rules/submit.smk"


report: "report/workflow.rst"


# bookkeeping rules run inside the Snakemake process's node, not as cluster jobs
localrules:
    all,
    submission,
    gather_features,
    make_folds,


rule all:
    default_target: True
    input:
        rules.submission.input,
