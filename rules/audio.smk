# Acoustic features: one job per model streams every video's audio through it.


rule audio_features:
    input:
        # extract_frames' batch folders: {media}.wav / {media}.json of every media file
        audio=lambda wc: decoded_dirs(results.audio_batch),
        frames=lambda wc: decoded_dirs(results.frames_batch),
        weights=lambda wc: weights(f"audio.{wc.model}.weights"),
        videos=lambda wc: ancient(audio_list()),
    output:
        shard=results.audio_shard("{model}"),
        bench="results/benchmarks/audio_features/{model}.tsv",
    log:
        "results/logs/audio_features/{model}.log",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("audio_features"),
    params:
        # only this model's settings: a VGGish change does not rerun HuBERT
        audio=lambda wc: as_json(
            {
                **{
                    k: config["audio"][k]
                    for k in (
                        "sample_rate",
                        "chunk_seconds",
                        "overlap_seconds",
                        "batch_size",
                    )
                },
                wc.model: config["audio"][wc.model],
            }
        ),
        listed=lambda wc: list_digest(audio_list()),
        code=code_digest("audio_features"),
    shell:
        "affect audio_features --model {wildcards.model} --weights {input.weights:q}"
        " --weights-key audio.{wildcards.model}.weights --videos=@{input.videos:q}"
        " --audio {input.audio:q} --frames {input.frames:q} --out {output.shard:q}"
        " --params {params.audio:q} --threads {threads} --benchmark {output.bench:q} > {log:q} 2>&1"
