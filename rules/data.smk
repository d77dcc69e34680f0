# Data: decode each video (frame index + audio) and index the dataset (ids, splits, labels).


rule extract_frames:
    input:
        lambda wc: layout().media_paths()[wc.media],
    output:
        frames="results/frames/{media}.json",
        audio="results/audio/{media}.wav",
    log:
        "results/logs/extract_frames/{media}.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        sr=config["audio"]["sample_rate"],
        code=code_digest("extract_frames"),
    shell:
        "affect extract_frames --video {input:q} --out {output.frames:q} --audio-out {output.audio:q}"
        " --sample-rate {params.sr} --threads {threads} > {log:q} 2>&1"


rule index_dataset:
    input:
        frames=lambda wc: sorted({frames_json(v) for v in layout().ids()}),
    output:
        tsv="results/index/videos.tsv",
        labels=expand("results/index/labels/{task}.h5", task=TASKS),
        report="results/index/index_report.json",
    log:
        "results/logs/index_dataset.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        data=as_json({k: config[k] for k in ("affwild2", "hume", "tasks")}),
        code=code_digest("index_dataset"),
    shell:
        "affect index_dataset --data {params.data:q} --frames {input.frames:q}"
        " --out-dir results/index > {log:q} 2>&1"
