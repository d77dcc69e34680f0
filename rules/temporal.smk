# Temporal learning per task and fold: folds, BLB, hard-clip mining (D_CLB), DCL, prediction.


TEMPORAL_CODE = ("clips", "temporal", "temporal_training", "losses", "metrics")


rule gather_features:
    input:
        lambda wc: feature_files(wc.task),
    output:
        "results/features/{task}.manifest.json",
    params:
        features=features_arg,
        videos=lambda wc: as_json(task_videos(wc.task)),
        code=code_digest(),
    conda:
        CONDA_ENV
    log:
        "results/logs/gather_features/{task}.log",
    shell:
        "python -m affect_pipeline gather_features --features {params.features}"
        " --videos {params.videos:q} --out {output:q} > {log:q} 2>&1"


rule make_folds:
    input:
        labels="results/index/labels/{task}.h5",
        index="results/index/videos.tsv",
    output:
        "results/folds/{task}.json",
    params:
        folds=as_json({"k": config["folds"], "seed": config["seed"]}),
        code=code_digest("folds", "dataset"),
    conda:
        CONDA_ENV
    log:
        "results/logs/make_folds/{task}.log",
    shell:
        "python -m affect_pipeline make_folds --task {wildcards.task} --labels {input.labels:q}"
        " --index {input.index:q} --out {output:q} --params {params.folds:q} > {log:q} 2>&1"


rule train_blb:
    input:
        unpack(fold_inputs),
    output:
        model="results/models/{task}/{fold}/blb.pt",
        metrics="results/models/{task}/{fold}/blb_metrics.json",
        curve="results/models/{task}/{fold}/blb_curve.csv",
    params:
        seed=config["seed"],
        temporal=temporal_params(),
        features=features_arg,
        code=code_digest(*TEMPORAL_CODE),
    threads: THREADS
    resources:
        **res("train_blb"),
    conda:
        CONDA_ENV
    log:
        "results/logs/train_blb/{task}/{fold}.log",
    shell:
        "python -m affect_pipeline train_blb --task {wildcards.task} --fold {wildcards.fold}"
        " --folds {input.folds:q} --labels {input.labels:q} --features {params.features}"
        " --out {output.model:q} --metrics {output.metrics:q} --curve {output.curve:q}"
        " --params {params.temporal:q} --threads {threads} --seed {params.seed} > {log:q} 2>&1"


rule mine_hard_clips:
    input:
        unpack(fold_inputs),
        blb="results/models/{task}/{fold}/blb.pt",
    output:
        "results/models/{task}/{fold}/clb_clips.json",
    params:
        seed=config["seed"],
        temporal=temporal_params("mining"),
        features=features_arg,
        code=code_digest("mining", *TEMPORAL_CODE),
    threads: THREADS
    resources:
        **res("mine_hard_clips"),
    conda:
        CONDA_ENV
    log:
        "results/logs/mine_hard_clips/{task}/{fold}.log",
    shell:
        "python -m affect_pipeline mine_hard_clips --task {wildcards.task} --fold {wildcards.fold}"
        " --folds {input.folds:q} --labels {input.labels:q} --features {params.features}"
        " --blb {input.blb:q} --out {output:q} --params {params.temporal:q} --threads {threads}"
        " --seed {params.seed} > {log:q} 2>&1"


rule train_dcl:
    input:
        unpack(fold_inputs),
        blb="results/models/{task}/{fold}/blb.pt",
        clb_clips="results/models/{task}/{fold}/clb_clips.json",
    output:
        model="results/models/{task}/{fold}/dcl.pt",
        metrics="results/models/{task}/{fold}/dcl_metrics.json",
        curve="results/models/{task}/{fold}/dcl_curve.csv",
    params:
        seed=config["seed"],
        temporal=temporal_params("dcl"),
        features=features_arg,
        code=code_digest(*TEMPORAL_CODE),
    threads: THREADS
    resources:
        **res("train_dcl"),
    conda:
        CONDA_ENV
    log:
        "results/logs/train_dcl/{task}/{fold}.log",
    shell:
        "python -m affect_pipeline train_dcl --task {wildcards.task} --fold {wildcards.fold}"
        " --folds {input.folds:q} --labels {input.labels:q} --features {params.features}"
        " --blb {input.blb:q} --clb-clips {input.clb_clips:q} --out {output.model:q}"
        " --metrics {output.metrics:q} --curve {output.curve:q} --params {params.temporal:q}"
        " --threads {threads} --seed {params.seed} > {log:q} 2>&1"


rule predict:
    input:
        unpack(fold_inputs),
        model="results/models/{task}/{fold}/dcl.pt",
        index="results/index/videos.tsv",
    output:
        "results/predictions/{task}/{fold}.h5",
    params:
        temporal=temporal_params("dcl"),
        features=features_arg,
        code=code_digest(*TEMPORAL_CODE),
    threads: THREADS
    resources:
        **res("predict"),
    conda:
        CONDA_ENV
    log:
        "results/logs/predict/{task}/{fold}.log",
    shell:
        "python -m affect_pipeline predict --task {wildcards.task} --fold {wildcards.fold}"
        " --model {input.model:q} --folds {input.folds:q} --labels {input.labels:q}"
        " --features {params.features} --index {input.index:q} --out {output:q}"
        " --params {params.temporal:q} --threads {threads} > {log:q} 2>&1"
