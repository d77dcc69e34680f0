# affect_pipeline: face videos -> MAE + audio features -> BLB / DCL -> ABAW submission files.
# Usage: snakemake --cores 8 submission          (the embedded demo: profiles/default loads
#                                                  demo_config.yaml)
#        snakemake --cores 8 --configfile my.yaml submission     (your data, the paper's settings)
import os

from snakemake.utils import min_version

min_version("9.0")


# the paper's settings live beside this file; --configfile files overlay them
configfile: os.path.join(workflow.basedir, "workflow_config.yaml")


include: "rules/common.smk"


wildcard_constraints:
    task="AU|EXPR|VA|ERI",
    fold="official|fold[0-9]+",
    batch="(affwild2|hume)_[0-9]+",
    media="[^/]+",
    model="hubert|wav2vec2|vggish",


include: "rules/demo.smk"
include: "rules/data.smk"
include: "rules/faces.smk"
include: "rules/mae.smk"
include: "rules/audio.smk"
include: "rules/temporal.smk"
include: "rules/submit.smk"


report: "report/workflow.rst"


# bookkeeping rules run inside the Snakemake process's node, not as cluster jobs
localrules:
    all,
    submission,
    make_folds,
    run_config,


rule all:
    default_target: True
    input:
        rules.submission.input,
