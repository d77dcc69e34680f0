# The visual backbone: MAE pretraining (or import), frame-wise fine-tuning, per-frame features.


rule pretrain_mae:
    input:
        faces=[] if config["mae"]["checkpoint"] else pretrain_faces(),
        checkpoint=[config["mae"]["checkpoint"]] if config["mae"]["checkpoint"] else [],
    output:
        model="results/mae/pretrain.pt",
        curve=report("results/mae/pretrain_curve.csv", category="Training", subcategory="MAE pretraining"),
    params:
        seed=config["seed"],
        mae=mae_params("checkpoint", "pretrain", "gpus"),
        launch=torch_launcher(config["mae"]["gpus"]),
        code=code_digest("mae", "mae_training"),
    threads: THREADS
    resources:
        **res("pretrain_mae"),
    conda:
        CONDA_ENV
    log:
        "results/logs/pretrain_mae.log",
    shell:
        "{params.launch} pretrain_mae --faces {input.faces:q} --out {output.model:q} --curve {output.curve:q}"
        " --params {params.mae:q} --threads {threads} --seed {params.seed} > {log:q} 2>&1"


rule finetune_mae:
    input:
        pretrained="results/mae/pretrain.pt",
        labels="results/index/labels/{task}.h5",
        faces=lambda wc: [f"results/faces/{v}.h5" for v in task_videos(wc.task, ("train", "validation"))],
    output:
        model="results/mae/finetune_{task}.pt",
        metrics="results/mae/finetune_{task}_metrics.json",
        curve="results/mae/finetune_{task}_curve.csv",
    params:
        seed=config["seed"],
        mae=mae_params("finetune", "gpus"),
        launch=torch_launcher(config["mae"]["gpus"]),
        code=code_digest("mae", "mae_training", "losses", "metrics"),
    threads: THREADS
    resources:
        **res("finetune_mae"),
    conda:
        CONDA_ENV
    log:
        "results/logs/finetune_mae/{task}.log",
    shell:
        "{params.launch} finetune_mae --task {wildcards.task} --pretrained {input.pretrained:q}"
        " --labels {input.labels:q} --faces-dir results/faces --out {output.model:q}"
        " --metrics {output.metrics:q} --curve {output.curve:q} --params {params.mae:q}"
        " --threads {threads} --seed {params.seed} > {log:q} 2>&1"


rule visual_features:
    input:
        model="results/mae/finetune_{task}.pt",
        faces="results/faces/{video}.h5",
    output:
        "results/features/mae_{task}/{video}.h5",
    params:
        mae=mae_params("features"),
        code=code_digest("mae", "mae_training"),
    threads: THREADS
    resources:
        **res("visual_features"),
    conda:
        CONDA_ENV
    log:
        "results/logs/visual_features/{task}/{video}.log",
    shell:
        "python -m affect_pipeline visual_features --task {wildcards.task} --model {input.model:q}"
        " --faces {input.faces:q} --out {output:q} --params {params.mae:q} --threads {threads}"
        " > {log:q} 2>&1"
