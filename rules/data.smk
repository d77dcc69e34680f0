# Data: decode each media file (frame index + audio), a stable batch of them per job, and index the
# dataset (ids, splits, labels).


rule extract_frames:
    """One job per stable batch of media files (resources.media_batches): {media}.json and
    {media}.wav of each into the batch's folders. A file that fails to decode gets a frames JSON
    recording the error (and no wav): its batch mates complete, and index_dataset reports it.
    """
    input:
        media=lambda wc: [layout().media_paths()[m] for m in batch_media(wc.batch)],
        batch=lambda wc: ancient(extract_list(wc)),
    output:
        frames=directory(results.frames_batch("{batch}")),
        audio=directory(results.audio_batch("{batch}")),
        bench="results/benchmarks/extract_frames/{batch}.tsv",
    log:
        "results/logs/extract_frames/{batch}.log",
    conda:
        CONDA_ENV
    threads: 1
    params:
        sr=config["audio"]["sample_rate"],
        listed=lambda wc: list_digest(extract_list(wc)),
        code=code_digest("extract_frames"),
    shell:
        "affect extract_frames --batch=@{input.batch:q} --frames-dir {output.frames:q}"
        " --audio-dir {output.audio:q} --cache results/frames/.cache --code-digest {params.code}"
        " --sample-rate {params.sr} --threads {threads} --benchmark {output.bench:q} > {log:q} 2>&1"


rule index_dataset:
    input:
        frames=lambda wc: decoded_dirs(results.frames_batch),
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
