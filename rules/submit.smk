# The product: fold ensembles, official submission files, metrics summary, report figures, and
# the run's settings (read back by affect-predict). Figure categories / captions come from
# affect_pipeline.submit.report, which imports no matplotlib at parse time.

from affect_pipeline.submit.report import FIGURES


rule ensemble:
    input:
        preds=expand("results/predictions/{{task}}/{fold}.h5", fold=ENSEMBLE_FOLDS),
        metrics=[
            results.metrics(results.fold_model("{task}", f, "dcl"))
            for f in ENSEMBLE_FOLDS
        ],
        index="results/index/videos.tsv",
        index_report="results/index/index_report.json",
        labels="results/index/labels/{task}.h5",
        folds="results/folds/{task}.json",
    output:
        submission="results/submission/{task}/predictions.txt",
        probs="results/submission/{task}/ensemble.h5",
    log:
        "results/logs/ensemble/{task}.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        ensemble=as_json(config["ensemble"]),
        code=code_digest("ensemble"),
    shell:
        "affect ensemble --task {wildcards.task} --preds {input.preds:q} --metrics {input.metrics:q}"
        " --index {input.index:q} --index-report {input.index_report:q} --out {output.submission:q}"
        " --h5 {output.probs:q} --labels {input.labels:q} --folds {input.folds:q}"
        " --params {params.ensemble:q} > {log:q} 2>&1"


rule summarize:
    input:
        finetune=expand(
            results.metrics(results.encoder("{task}", "{fold}")),
            task=FRAME_TASKS,
            fold=FINETUNE_FOLDS,
        ),
        metrics=expand(
            results.metrics(results.fold_model("{task}", "{fold}", "{stage}")),
            task=TASKS,
            fold=FOLDS,
            stage=["blb", "dcl"],
        ),
        submissions=expand("results/submission/{task}/predictions.txt", task=TASKS),
        labels=expand("results/index/labels/{task}.h5", task=TASKS),
        index="results/index/videos.tsv",
    output:
        summary="results/metrics/summary.json",
        ablation=report(
            "results/metrics/ablation.tsv",
            category="Metrics",
            caption="../report/ablation.rst",
        ),
    log:
        "results/logs/summarize.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        tasks=TASKS,
        folds=FOLDS,
        test_labels=test_labels_arg,
        shared="" if PER_FOLD else "--shared-encoder",
        code=code_digest("summarize"),
    shell:
        "affect summarize --tasks {params.tasks} --folds {params.folds}"
        " --finetune-metrics {input.finetune:q} --stage-metrics {input.metrics:q}"
        " --submissions {input.submissions:q} --labels {input.labels:q} --index {input.index:q}"
        " {params.test_labels} {params.shared} --out {output.summary:q} --ablation {output.ablation:q}"
        " > {log:q} 2>&1"


rule report_plots:
    input:
        summary="results/metrics/summary.json",
        curves=["results/mae/pretrain_curve.csv"]
        + expand(
            "results/mae/{task}/{fold}/finetune_curve.csv",
            task=FRAME_TASKS,
            fold=FINETUNE_FOLDS,
        )
        + expand(
            "results/models/{task}/{fold}/{stage}_curve.csv",
            task=TASKS,
            fold=FOLDS,
            stage=["blb", "dcl"],
        ),
        predictions=(
            expand("results/predictions/VA/{fold}.h5", fold=ENSEMBLE_FOLDS)
            if "VA" in TASKS
            else []
        ),
        labels=["results/index/labels/VA.h5"] if "VA" in TASKS else [],
        ensembles=expand("results/submission/{task}/ensemble.h5", task=FRAME_TASKS),
        faces=lambda wc: face_batches(report_videos()),
    output:
        [
            report(
                f"results/report/{f.name}",
                category=f.category,
                caption=f"../report/{f.caption}.rst",
            )
            for f in FIGURES
        ],
    log:
        "results/logs/report_plots.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        tasks=TASKS,
        test_labels=test_labels_arg,
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        face_videos=lambda wc: as_json(report_videos()),
        code=code_digest("report_plots"),
    shell:
        "affect report_plots --summary {input.summary:q} --curves {input.curves:q}"
        " --predictions {input.predictions:q} --labels {input.labels:q} --ensembles {input.ensembles:q}"
        " --faces {input.faces:q} --face-videos={params.face_videos:q} --tasks {params.tasks} {params.test_labels} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


# The multi-seed ablation (python -m benchmarks.ablation --run DIR) writes
# metrics/ablation_seeds.json into a finished run: when it is there, the report shows its figure.
SEED_ABLATION = os.path.exists("results/metrics/ablation_seeds.json")


rule seed_ablation:
    input:
        "results/metrics/ablation_seeds.json",
    output:
        report(
            "results/report/ablation_seeds.png",
            category="Metrics",
            caption="../report/ablation_seeds.rst",
        ),
    log:
        "results/logs/seed_ablation.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        code=code_digest("seed_ablation"),
    shell:
        "affect seed_ablation --table {input:q} --png {output:q} > {log:q} 2>&1"


rule run_config:
    output:
        "results/config.yaml",
    log:
        "results/logs/run_config.log",
    threads: 1
    params:
        config=as_json(config),
    run:
        from affect_pipeline.common.config import write_run_config

        write_run_config(json.loads(params.config), output[0])


rule submission:
    input:
        expand("results/submission/{task}/predictions.txt", task=TASKS),
        "results/config.yaml",
        "results/metrics/summary.json",
        [f"results/report/{f.name}" for f in FIGURES],
        ["results/report/ablation_seeds.png"] if SEED_ABLATION else [],
