# The embedded demo (a config with a `demo:` section): its generated tree and its small audio models.

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

    # the paper's audio model sizes with random weights (tests/workflow/test_paper_size.py):
    # built only when a config points audio weights at them
    rule make_paper_weights:
        output:
            hubert=directory(f"{config['demo']['root']}/paper_models/hubert"),
            wav2vec2=directory(f"{config['demo']['root']}/paper_models/wav2vec2"),
            vggish=f"{config['demo']['root']}/paper_models/vggish.pth",
            bench="results/benchmarks/make_paper_weights.tsv",
        log:
            "results/logs/make_paper_weights.log",
        conda:
            CONDA_ENV
        threads: 1
        params:
            seed=config["demo"]["seed"],
            out=lambda wc, output: os.path.dirname(output.vggish),
            code=code_digest("make_paper_weights"),
        shell:
            "affect make_paper_weights --out-dir {params.out:q} --seed {params.seed}"
            " --benchmark {output.bench:q} > {log:q} 2>&1"
