# The product: fold ensembles, official submission files, metrics summary, report figures.

from affect_pipeline.report import REPORT_FILES

CAPTIONS = {"curves": "curves", "confusion": "confusion", "au": "au_f1", "va": "va_scatter", "eri": "eri_pcc",
            "timelines": "timelines", "faces": "faces", "ablation": "ablation"}


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
    conda:
        CONDA_ENV
    log:
        "results/logs/ensemble/{task}.log",
    shell:
        "python -m affect_pipeline ensemble --task {wildcards.task} --preds {input.preds:q}"
        " --metrics {input.metrics:q} --index {input.index:q} --out {output.submission:q}"
        " --params {params.ensemble:q} > {log:q} 2>&1"


rule summarize:
    input:
        finetune=expand("results/mae/finetune_{task}_metrics.json", task=FRAME_TASKS),
        metrics=expand("results/models/{task}/{fold}/{stage}_metrics.json", task=TASKS, fold=FOLDS, stage=["blb", "dcl"]),
        submissions=expand("results/submission/{task}/predictions.txt", task=TASKS),
        labels=expand("results/index/labels/{task}.h5", task=TASKS),
    output:
        summary="results/metrics/summary.json",
        ablation=report("results/metrics/ablation.tsv", category="Metrics", caption="../report/ablation.rst"),
    params:
        tasks=TASKS,
        folds=FOLDS,
        test_labels=demo_test_labels_arg,
        code=code_digest("submission", "metrics"),
    conda:
        CONDA_ENV
    log:
        "results/logs/summarize.log",
    shell:
        "python -m affect_pipeline summarize --results results --tasks {params.tasks} --folds {params.folds}"
        " {params.test_labels} --out {output.summary:q} --ablation {output.ablation:q} > {log:q} 2>&1"


rule report_plots:
    input:
        summary="results/metrics/summary.json",
    output:
        [report(f"results/report/{name}", category="Figures", caption=f"../report/{CAPTIONS[name.split('_')[0].split('.')[0]]}.rst")
         for name in REPORT_FILES],
    params:
        tasks=TASKS,
        test_labels=demo_test_labels_arg,
        code=code_digest("report"),
    conda:
        CONDA_ENV
    log:
        "results/logs/report_plots.log",
    shell:
        "python -m affect_pipeline report_plots --results results --out-dir results/report --tasks {params.tasks}"
        " {params.test_labels} > {log:q} 2>&1"


rule submission:
    input:
        expand("results/submission/{task}/predictions.txt", task=TASKS),
        "results/metrics/summary.json",
        [f"results/report/{name}" for name in REPORT_FILES],
