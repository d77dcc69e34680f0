# Acoustic features per video and model, aligned to the video's frames.


rule audio_features:
    input:
        audio="results/audio/{video}.wav",
        frames=lambda wc: frames_json(wc.video),
        weights=lambda wc: audio_weights(wc.model),
    output:
        "results/features/{model}/{video}.h5",
    params:
        audio=as_json(config["audio"]),
        key=lambda wc: f"audio.{wc.model}.weights",
        code=code_digest("audio_features"),
    threads: THREADS
    resources:
        **res("audio_features"),
    conda:
        CONDA_ENV
    log:
        "results/logs/audio_features/{model}/{video}.log",
    shell:
        "python -m affect_pipeline audio_features --model {wildcards.model} --weights {input.weights:q}"
        " --weights-key {params.key} --audio {input.audio:q} --frames {input.frames:q}"
        " --out {output:q} --params {params.audio:q} --threads {threads} > {log:q} 2>&1"
