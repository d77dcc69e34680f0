# Faces: detect, align and crop every video's faces, one job per stable batch of videos.


rule crop_faces:
    """One job per stable batch of videos (resources.face_batches): the detector loads once per batch."""
    input:
        videos=lambda wc: [layout().videos[v].path for v in batch_videos(wc.batch)],
        frames=lambda wc: [frames_json(v) for v in batch_videos(wc.batch)],
    output:
        directory(results.faces_batch("{batch}")),
    log:
        "results/logs/crop_faces/{batch}.log",
    benchmark:
        "results/benchmarks/crop_faces/{batch}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **res("crop_faces"),
    params:
        batch=crop_batch,
        faces=faces_params,
        code=code_digest("crop_faces"),
    shell:
        "affect crop_faces --batch {params.batch:q} --out {output:q} --cache results/faces/.cache"
        " --code-digest {params.code} --params {params.faces:q} --threads {threads} > {log:q} 2>&1"
