# Acoustic features per video and model, aligned to the video's frames.


def audio_weights(model):
    w = config["audio"][model]["weights"]
    if not w:
        raise WorkflowError(f"config audio.{model}.weights is not set: give the local path of the "
                            f"{model} weights (a save_pretrained folder / state dict), or remove "
                            f"{model!r} from audio.models and temporal.features")
    return w


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
    log:
        "results/logs/audio_features/{model}/{video}.log",
    shell:
        "{PY:q} -m affect_pipeline audio_features --model {wildcards.model} --weights {input.weights:q}"
        " --weights-key {params.key} --audio {input.audio:q} --frames {input.frames:q}"
        " --out {output:q} --params {params.audio:q} --threads {threads} > {log:q} 2>&1"
