# Data stages: the demo tree (when the config has a `demo:` section), decoding, the index, faces.

if "demo" in config:

    checkpoint make_demo:
        output:
            f"{config['demo']['root']}/manifest.json",
        log:
            "results/logs/make_demo.log",
        priority: 10  # everything but the audio models waits for the tree: make it first
        conda:
            CONDA_ENV
        threads: 4  # a fork pool renders the media files (same bytes at any count)
        params:
            demo=as_json(config["demo"]),
            root=lambda wc, output: os.path.dirname(output[0]),
            code=code_digest("make_demo"),
        shell:
            "affect make_demo --out {params.root:q} --params {params.demo:q} --threads {threads}"
            " > {log:q} 2>&1"

    rule make_demo_audio_models:
        output:
            hubert=directory(f"{config['demo']['root']}/models/hubert"),
            wav2vec2=directory(f"{config['demo']['root']}/models/wav2vec2"),
            vggish=f"{config['demo']['root']}/models/vggish.pth",
        log:
            "results/logs/make_demo_audio_models.log",
        conda:
            CONDA_ENV
        threads: 1
        params:
            seed=config["demo"]["seed"],
            out=lambda wc, output: os.path.dirname(output.vggish),
            code=code_digest("make_demo_audio_models"),
        shell:
            "affect make_demo_audio_models --out-dir {params.out:q} --seed {params.seed} > {log:q} 2>&1"


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


rule crop_faces:
    """One job per stable batch of videos (resources.face_batches): the detector loads once per batch."""
    input:
        videos=lambda wc: [layout().videos[v].path for v in batch_videos(wc.batch)],
        frames=lambda wc: [frames_json(v) for v in batch_videos(wc.batch)],
    output:
        directory("results/faces/{batch}"),
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
