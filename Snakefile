# affect_pipeline: face videos -> MAE + audio features -> BLB / DCL -> ABAW submission files.
# Usage: snakemake --cores 8 submission          (the embedded demo: profiles/default loads
#                                                  demo_config.yaml)
#        snakemake --cores 8 --configfile my.yaml submission     (your data, the paper's settings)
import os

from snakemake.utils import min_version

from affect_pipeline.audio.models import MODELS as AUDIO_MODELS

min_version("9.0")


# the paper's settings live beside this file; --configfile files overlay them
configfile: os.path.join(workflow.basedir, "workflow_config.yaml")


include: "rules/common.smk"


wildcard_constraints:
    task="|".join(ABAW_TASKS),
    fold="official|fold[0-9]+",
    batch="(affwild2|hume)_[0-9]+",
    media="[^/]+",
    model="|".join(AUDIO_MODELS),


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
