# Faces: detect, align and crop every video's faces, one job per stable batch of videos.


rule crop_faces:
    """One job per batch of extract_frames (resources.media_batches): the detector loads once per
    batch. A video whose decode failed in extract_frames is skipped (named in the log and in the
    batch's failed.json); its batch mates' stores are written."""
    input:
        videos=lambda wc: [layout().media_paths()[m] for m in batch_media(wc.batch)],
        frames=results.frames_batch("{batch}"),
        batch=lambda wc: ancient(crop_list(wc)),
    output:
        faces=directory(results.faces_batch("{batch}")),
        bench="results/benchmarks/crop_faces/{batch}.tsv",
    log:
        "results/logs/crop_faces/{batch}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **res("crop_faces"),
    params:
        faces=faces_params,
        listed=lambda wc: list_digest(crop_list(wc)),
        code=code_digest("crop_faces"),
    shell:
        "affect crop_faces --batch=@{input.batch:q} --out {output.faces:q} --cache results/faces/.cache"
        " --code-digest {params.code} --params {params.faces:q} --threads {threads} --benchmark {output.bench:q} > {log:q} 2>&1"
