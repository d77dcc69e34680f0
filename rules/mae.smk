# The visual backbone: MAE pretraining (or import), per-fold frame-wise fine-tuning, features.


rule pretrain_mae:
    input:
        faces=lambda wc: (
            [] if config["mae"]["checkpoint"] else face_batches(pretrain_videos())
        ),
        checkpoint=lambda wc: (
            [weights("mae.checkpoint")] if config["mae"]["checkpoint"] else []
        ),
        # the batches also hold validation / test videos: only these are learnt from
        videos=lambda wc: ancient(pretrain_list()),
    output:
        model="results/mae/pretrain.pt",
        curve=report(
            "results/mae/pretrain_curve.csv",
            category="Training",
            subcategory="MAE pretraining",
            caption="../report/pretrain.rst",
        ),
        bench="results/benchmarks/pretrain_mae.tsv",
    log:
        "results/logs/pretrain_mae.log",
    conda:
        CONDA_ENV
    # every fine-tune waits for this one job and little else is left to run beside it: it may
    # take up to 4x the per-job threads (Snakemake caps a rule's threads at --cores)
    threads: 4 * THREADS
    resources:
        **res("pretrain_mae"),
    params:
        seed=config["seed"],
        mae=mae_params("checkpoint", "pretrain", "gpus"),
        launch=torch_launcher(config["mae"]["gpus"]),
        # an imported checkpoint does not depend on the list (the job reads no face store)
        listed=lambda wc: (
            "" if config["mae"]["checkpoint"] else list_digest(pretrain_list())
        ),
        code=code_digest("pretrain_mae"),
    shell:
        "{params.launch} pretrain_mae --faces {input.faces:q} --videos=@{input.videos:q} --out {output.model:q} --curve {output.curve:q}"
        " --params {params.mae:q} --threads {threads} --seed {params.seed} --benchmark {output.bench:q} > {log:q} 2>&1"


rule finetune_mae:
    input:
        pretrained="results/mae/pretrain.pt",
        folds="results/folds/{task}.json",
        labels="results/index/labels/{task}.h5",
        # every fold's train + validation videos are among these; the job reads its fold's only
        faces=lambda wc: face_batches(task_videos(wc.task, ("train", "validation"))),
    output:
        model=results.encoder("{task}", "{fold}"),
        metrics="results/mae/{task}/{fold}/finetune_metrics.json",
        curve="results/mae/{task}/{fold}/finetune_curve.csv",
        bench="results/benchmarks/finetune_mae/{task}/{fold}.tsv",
    log:
        "results/logs/finetune_mae/{task}/{fold}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("finetune_mae"),
    params:
        seed=config["seed"],
        # + mae.features.pool: the head learns on the feature visual_features will pool
        mae=as_json(
            {
                **{k: config["mae"][k] for k in ("model", "finetune", "gpus")},
                "features": {"pool": config["mae"]["features"]["pool"]},
            }
        ),
        launch=torch_launcher(config["mae"]["gpus"]),
        code=code_digest("finetune_mae"),
    shell:
        "{params.launch} finetune_mae --task {wildcards.task} --fold {wildcards.fold} --folds {input.folds:q}"
        " --pretrained {input.pretrained:q} --labels {input.labels:q} --faces {input.faces:q}"
        " --out {output.model:q} --metrics {output.metrics:q} --curve {output.curve:q}"
        " --params {params.mae:q} --threads {threads} --seed {params.seed} --benchmark {output.bench:q} > {log:q} 2>&1"


rule visual_features:
    """One job per task: its fold encoders share one decode of each face store."""
    input:
        models=lambda wc: [encoder(wc.task, f) for f in FINETUNE_FOLDS],
        faces=lambda wc: face_batches(task_videos(wc.task)),
        videos=lambda wc: ancient(visual_list(wc.task)),
    output:
        shards=[results.visual_shard("{task}", f) for f in FINETUNE_FOLDS],
        bench="results/benchmarks/visual_features/{task}.tsv",
    log:
        "results/logs/visual_features/{task}.log",
    wildcard_constraints:
        task="|".join(FRAME_TASKS) or "none",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("visual_features"),
    params:
        mae=as_json(config["mae"]["features"]),
        listed=lambda wc: list_digest(visual_list(wc.task)),
        code=code_digest("visual_features"),
    shell:
        "affect visual_features --model {input.models:q} --faces {input.faces:q}"
        " --videos=@{input.videos:q} --out {output.shards:q}"
        " --params {params.mae:q} --threads {threads} --benchmark {output.bench:q} > {log:q} 2>&1"


# ERI's videos (Hume) are in no Aff-Wild2 fold: one shard, by the official encoder of ERI_VISUAL
use rule visual_features as visual_features_eri with:
    input:
        models=[encoder("ERI", "official")],
        faces=lambda wc: face_batches(task_videos("ERI")),
        videos=lambda wc: ancient(visual_list("ERI")),
    output:
        shards=results.visual_shard("{task}", "official"),
        bench="results/benchmarks/visual_features/{task}.tsv",
    wildcard_constraints:
        task="ERI",
