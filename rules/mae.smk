# The visual backbone: MAE pretraining (or import), per-fold frame-wise fine-tuning, features.


rule pretrain_mae:
    input:
        faces=lambda wc: (
            [] if config["mae"]["checkpoint"] else face_batches(pretrain_videos())
        ),
        checkpoint=lambda wc: (
            [weights("mae.checkpoint")] if config["mae"]["checkpoint"] else []
        ),
    output:
        model="results/mae/pretrain.pt",
        curve=report(
            "results/mae/pretrain_curve.csv",
            category="Training",
            subcategory="MAE pretraining",
            caption="../report/pretrain.rst",
        ),
    log:
        "results/logs/pretrain_mae.log",
    benchmark:
        "results/benchmarks/pretrain_mae.tsv"
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
        # the batches also hold validation / test videos: only these are learnt from
        videos=lambda wc: [] if config["mae"]["checkpoint"] else pretrain_videos(),
        code=code_digest("pretrain_mae"),
    shell:
        "{params.launch} pretrain_mae --faces {input.faces:q} --videos {params.videos:q} --out {output.model:q} --curve {output.curve:q}"
        " --params {params.mae:q} --threads {threads} --seed {params.seed} > {log:q} 2>&1"


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
    log:
        "results/logs/finetune_mae/{task}/{fold}.log",
    benchmark:
        "results/benchmarks/finetune_mae/{task}/{fold}.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("finetune_mae"),
    params:
        seed=config["seed"],
        mae=mae_params("finetune", "gpus"),
        launch=torch_launcher(config["mae"]["gpus"]),
        code=code_digest("finetune_mae"),
    shell:
        "{params.launch} finetune_mae --task {wildcards.task} --fold {wildcards.fold} --folds {input.folds:q}"
        " --pretrained {input.pretrained:q} --labels {input.labels:q} --faces {input.faces:q}"
        " --out {output.model:q} --metrics {output.metrics:q} --curve {output.curve:q}"
        " --params {params.mae:q} --threads {threads} --seed {params.seed} > {log:q} 2>&1"


rule visual_features:
    """One job per task: its fold encoders share one decode of each face store."""
    input:
        models=lambda wc: [encoder(wc.task, f) for f in FINETUNE_FOLDS],
        faces=lambda wc: face_batches(task_videos(wc.task)),
    output:
        [results.visual_shard("{task}", f) for f in FINETUNE_FOLDS],
    log:
        "results/logs/visual_features/{task}.log",
    benchmark:
        "results/benchmarks/visual_features/{task}.tsv"
    wildcard_constraints:
        task="|".join(FRAME_TASKS) or "none",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("visual_features"),
    params:
        mae=as_json(config["mae"]["features"]),
        videos=lambda wc: task_videos(wc.task),
        code=code_digest("visual_features"),
    shell:
        "affect visual_features --model {input.models:q} --faces {input.faces:q}"
        " --videos {params.videos:q} --out {output:q}"
        " --params {params.mae:q} --threads {threads} > {log:q} 2>&1"


# ERI's videos (Hume) are in no Aff-Wild2 fold: one shard, by the official encoder of ERI_VISUAL
use rule visual_features as visual_features_eri with:
    input:
        models=[encoder("ERI", "official")],
        faces=lambda wc: face_batches(task_videos("ERI")),
    output:
        results.visual_shard("{task}", "official"),
    wildcard_constraints:
        task="ERI",
