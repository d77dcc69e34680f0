# Acoustic features: one job per model streams every video's audio through it.


rule audio_features:
    input:
        audio=lambda wc: [f"results/audio/{m}.wav" for m in audio_media()],
        frames=lambda wc: [f"results/frames/{m}.json" for m in audio_media()],
        weights=lambda wc: weights(f"audio.{wc.model}.weights"),
    output:
        results.audio_shard("{model}"),
    log:
        "results/logs/audio_features/{model}.log",
    benchmark:
        "results/benchmarks/audio_features/{model}.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **res("audio_features"),
    params:
        videos=lambda wc: as_json({v: layout().videos[v].media for v in layout().ids()}),
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
        code=code_digest("audio_features"),
    shell:
        "affect audio_features --model {wildcards.model} --weights {input.weights:q}"
        " --weights-key audio.{wildcards.model}.weights --videos {params.videos:q}"
        " --audio {input.audio:q} --frames {input.frames:q} --out {output:q}"
        " --params {params.audio:q} --threads {threads} > {log:q} 2>&1"
