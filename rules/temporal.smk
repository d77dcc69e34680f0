# Temporal learning per task and fold: folds, BLB, hard-clip mining (D_CLB), DCL, prediction.


# a local rule (it runs where Snakemake runs, e.g. a login node): a plain, light process
rule make_folds:
    input:
        labels="results/index/labels/{task}.h5",
        index="results/index/videos.tsv",
    output:
        "results/folds/{task}.json",
    log:
        "results/logs/make_folds/{task}.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        folds=as_json({"k": config["folds"], "seed": config["seed"]}),
        code=code_digest("make_folds"),
    shell:
        "python -m affect_pipeline make_folds --task {wildcards.task} --labels {input.labels:q}"
        " --index {input.index:q} --out {output:q} --params {params.folds:q} > {log:q} 2>&1"


rule train_blb:
    input:
        unpack(fold_inputs),
    output:
        model=results.fold_model("{task}", "{fold}", "blb"),
        metrics=results.metrics(results.fold_model("{task}", "{fold}", "blb")),
        curve="results/models/{task}/{fold}/blb_curve.csv",
        bench="results/benchmarks/train_blb/{task}/{fold}.tsv",
    log:
        "results/logs/train_blb/{task}/{fold}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("train_blb"),
    params:
        seed=config["seed"],
        temporal=temporal_params(),
        code=code_digest("train_blb"),
    shell:
        "affect train_blb --task {wildcards.task} --fold {wildcards.fold}"
        " --folds {input.folds:q} --labels {input.labels:q} --features {input.features:q}"
        " --out {output.model:q} --metrics {output.metrics:q} --curve {output.curve:q}"
        " --params {params.temporal:q} --threads {threads} --seed {params.seed} --benchmark {output.bench:q} > {log:q} 2>&1"


rule mine_hard_clips:
    input:
        unpack(fold_inputs),
        blb=results.fold_model("{task}", "{fold}", "blb"),
    output:
        clips="results/models/{task}/{fold}/clb_clips.json",
        bench="results/benchmarks/mine_hard_clips/{task}/{fold}.tsv",
    log:
        "results/logs/mine_hard_clips/{task}/{fold}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("mine_hard_clips"),
    params:
        seed=config["seed"],
        temporal=temporal_params("mining"),
        code=code_digest("mine_hard_clips"),
    shell:
        "affect mine_hard_clips --task {wildcards.task} --fold {wildcards.fold}"
        " --folds {input.folds:q} --labels {input.labels:q} --features {input.features:q}"
        " --blb {input.blb:q} --out {output.clips:q} --params {params.temporal:q} --threads {threads}"
        " --seed {params.seed} --benchmark {output.bench:q} > {log:q} 2>&1"


rule train_dcl:
    input:
        unpack(fold_inputs),
        blb=results.fold_model("{task}", "{fold}", "blb"),
        clb_clips="results/models/{task}/{fold}/clb_clips.json",
    output:
        model=results.fold_model("{task}", "{fold}", "dcl"),
        metrics=results.metrics(results.fold_model("{task}", "{fold}", "dcl")),
        curve="results/models/{task}/{fold}/dcl_curve.csv",
        bench="results/benchmarks/train_dcl/{task}/{fold}.tsv",
    log:
        "results/logs/train_dcl/{task}/{fold}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("train_dcl"),
    params:
        seed=config["seed"],
        temporal=temporal_params("dcl"),
        code=code_digest("train_dcl"),
    shell:
        "affect train_dcl --task {wildcards.task} --fold {wildcards.fold}"
        " --folds {input.folds:q} --labels {input.labels:q} --features {input.features:q}"
        " --blb {input.blb:q} --clb-clips {input.clb_clips:q} --out {output.model:q}"
        " --metrics {output.metrics:q} --curve {output.curve:q} --params {params.temporal:q}"
        " --threads {threads} --seed {params.seed} --benchmark {output.bench:q} > {log:q} 2>&1"


rule predict:
    input:
        unpack(fold_inputs),
        model=results.fold_model("{task}", "{fold}", "dcl"),
        index="results/index/videos.tsv",
    output:
        predictions="results/predictions/{task}/{fold}.h5",
        bench="results/benchmarks/predict/{task}/{fold}.tsv",
    log:
        "results/logs/predict/{task}/{fold}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("predict"),
    params:
        temporal=temporal_params("dcl"),
        code=code_digest("predict"),
    shell:
        "affect predict --task {wildcards.task} --fold {wildcards.fold}"
        " --model {input.model:q} --folds {input.folds:q} --labels {input.labels:q}"
        " --features {input.features:q} --index {input.index:q} --out {output.predictions:q}"
        " --params {params.temporal:q} --threads {threads} --benchmark {output.bench:q} > {log:q} 2>&1"
