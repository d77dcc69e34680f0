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
