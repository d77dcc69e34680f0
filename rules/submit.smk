# The product: fold ensembles, official submission files, metrics summary, report figures.

REPORT_PLOTS = ["ablation.png", "curves.png", "confusion_EXPR.png", "au_f1.png", "va_scatter.png",
                "timelines.png", "faces_contact_sheet.png"]


rule ensemble:
    input:
        preds=expand("results/predictions/{{task}}/{fold}.h5", fold=ENSEMBLE_FOLDS),
        metrics=expand("results/models/{{task}}/{fold}/dcl_metrics.json", fold=ENSEMBLE_FOLDS),
        index="results/index/videos.tsv",
    output:
        submission="results/submission/{task}/predictions.txt",
        probs="results/submission/{task}/ensemble.h5",
    params:
        ensemble=as_json(config["ensemble"]),
        code=code_digest("submission", "metrics"),
    log:
        "results/logs/ensemble/{task}.log",
    shell:
        "{PY:q} -m affect_pipeline ensemble --task {wildcards.task} --preds {input.preds:q}"
        " --metrics {input.metrics:q} --index {input.index:q} --out {output.submission:q}"
        " --params {params.ensemble:q} > {log:q} 2>&1"


rule summarize:
    input:
        finetune=expand("results/mae/finetune_{task}_metrics.json", task=FRAME_TASKS),
        metrics=expand("results/models/{task}/{fold}/{stage}_metrics.json", task=TASKS, fold=FOLDS, stage=["blb", "dcl"]),
        submissions=expand("results/submission/{task}/predictions.txt", task=TASKS),
    output:
        summary="results/metrics/summary.json",
        ablation=report("results/metrics/ablation.tsv", category="Metrics", caption="../report/ablation.rst"),
    params:
        tasks=TASKS,
        folds=FOLDS,
        test_labels=f"--test-labels {shlex.quote(config['demo']['root'] + '/test_labels')}" if DEMO else "",
        code=code_digest("submission", "metrics"),
    log:
        "results/logs/summarize.log",
    shell:
        "{PY:q} -m affect_pipeline summarize --results results --tasks {params.tasks} --folds {params.folds}"
        " {params.test_labels} --out {output.summary:q} --ablation {output.ablation:q} > {log:q} 2>&1"


rule report_plots:
    input:
        summary="results/metrics/summary.json",
    output:
        [report(f"results/report/{name}", category="Figures", caption=f"../report/{Path(name).stem.split('_')[0]}.rst")
         for name in REPORT_PLOTS],
    params:
        code=code_digest("report"),
    log:
        "results/logs/report_plots.log",
    shell:
        "{PY:q} -m affect_pipeline report_plots --results results --out-dir results/report > {log:q} 2>&1"


rule submission:
    input:
        expand("results/submission/{task}/predictions.txt", task=TASKS),
        "results/metrics/summary.json",
        [f"results/report/{name}" for name in REPORT_PLOTS],
