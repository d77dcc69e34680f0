# Data stages: the demo dataset (when it is the input), frame probes, audio, the index, faces.

if DEMO:

    rule make_demo:
        output:
            videos=sorted(set(MEDIA.values())),
            manifest=f"{config['demo']['root']}/manifest.json",
        params:
            demo=as_json(DEMO_SPEC),
            root=lambda wc, output: os.path.dirname(output.manifest),
            code=code_digest("demo", "demo_manifest"),
        conda:
            CONDA_ENV
        log:
            "results/logs/make_demo.log",
        shell:
            "python -m affect_pipeline make_demo --out {params.root:q} --params {params.demo:q} > {log:q} 2>&1"

    rule make_demo_audio_models:
        output:
            hubert=directory(f"{config['demo']['root']}/models/hubert"),
            wav2vec2=directory(f"{config['demo']['root']}/models/wav2vec2"),
            vggish=f"{config['demo']['root']}/models/vggish.pth",
        params:
            seed=config["seed"],
            out=lambda wc, output: os.path.dirname(output.vggish),
            code=code_digest("audio_features"),
        conda:
            CONDA_ENV
        log:
            "results/logs/make_demo_audio_models.log",
        shell:
            "python -m affect_pipeline make_demo_audio_models --out-dir {params.out:q} --seed {params.seed} > {log:q} 2>&1"


rule extract_frames:
    input:
        lambda wc: MEDIA[wc.media],
    output:
        "results/frames/{media}.json",
    params:
        code=code_digest("video"),
    threads: 1
    conda:
        CONDA_ENV
    log:
        "results/logs/extract_frames/{media}.log",
    shell:
        "python -m affect_pipeline extract_frames --video {input:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule extract_audio:
    input:
        video=lambda wc: video_path(wc.video),
        frames=lambda wc: frames_json(wc.video),
    output:
        "results/audio/{video}.wav",
    params:
        sr=config["audio"]["sample_rate"],
        code=code_digest("video"),
    threads: 1
    conda:
        CONDA_ENV
    log:
        "results/logs/extract_audio/{video}.log",
    shell:
        "python -m affect_pipeline extract_audio --video {input.video:q} --frames {input.frames:q}"
        " --out {output:q} --sample-rate {params.sr} > {log:q} 2>&1"


rule index_dataset:
    input:
        frames=sorted({frames_json(v) for v in VIDEOS}),
        demo=[f"{config['demo']['root']}/manifest.json"] if DEMO else [],
    output:
        tsv="results/index/videos.tsv",
        labels=expand("results/index/labels/{task}.h5", task=TASKS),
        report="results/index/index_report.json",
    params:
        data=as_json({**{k: config[k] for k in ("affwild2", "hume", "tasks")}, "demo": DEMO_SPEC}),
        code=code_digest("dataset", "layout"),
    conda:
        CONDA_ENV
    log:
        "results/logs/index_dataset.log",
    shell:
        "python -m affect_pipeline index_dataset --data {params.data:q} --frames-dir results/frames"
        " --out-dir results/index > {log:q} 2>&1"


rule crop_faces:
    input:
        video=lambda wc: video_path(wc.video),
        frames=lambda wc: frames_json(wc.video),
    output:
        "results/faces/{video}.h5",
    params:
        faces=faces_params,
        side=lambda wc: LAYOUT.videos[wc.video].side or "none",
        cropped=lambda wc: f"--cropped-dir {shlex.quote(cropped_dir(wc))}" if cropped_dir(wc) else "",
        code=code_digest("faces", "video"),
    threads: THREADS
    resources:
        **res("crop_faces"),
    conda:
        CONDA_ENV
    log:
        "results/logs/crop_faces/{video}.log",
    shell:
        "python -m affect_pipeline crop_faces --video {input.video:q} --frames {input.frames:q}"
        " --out {output:q} --side {params.side} {params.cropped}"
        " --params {params.faces:q} --threads {threads} > {log:q} 2>&1"
