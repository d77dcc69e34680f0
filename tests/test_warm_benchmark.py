"""Benchmark files measure the job, however it is launched (issue 32): Snakemake's ``benchmark:``
sampler watches the shell's process tree, which a warm job (forked by the server) is not in, so
the rules pass ``--benchmark PATH`` and the stage records itself (affect_pipeline.common.jobstats)
in Snakemake's own format.

The job here is a real stage whose ``--params`` file carries ~320 MB of JSON whitespace: reading
it takes > 300 MB of memory in the job's process, the launcher itself stays at ~20 MB.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from snakemake.benchmark import BenchmarkRecord
from test_warm import PY, _tiny_task, launch, wait_for_server, warm_env  # noqa: F401 - the fixture

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def big_params(tmp_path) -> Path:
    p = tmp_path / "params.json"
    if not p.exists():
        with open(p, "w") as f:
            f.write('{"k": 2,')
            f.write(" " * (320 << 20))
            f.write('"seed": 0}')
    return p


def folds_args(tmp_path, out: str, bench: str, big=True) -> list[str]:
    labels, index = tmp_path / "labels.h5", tmp_path / "videos.tsv"
    if not labels.exists():
        _tiny_task(labels, index)
    params = f"@{big_params(tmp_path)}" if big else '{"k": 2, "seed": 0}'
    return ["make_folds", "--task", "VA", "--labels", str(labels), "--index", str(index), "--out", out,
            "--params", params, "--benchmark", bench]


def read_record(path: Path) -> dict:
    head, row = path.read_text().splitlines()
    assert head.split("\t") == BenchmarkRecord.get_header()      # Snakemake's columns, its order
    return dict(zip(head.split("\t"), row.split("\t")))


def test_benchmark_records_the_job_warm_and_cold(warm_env, tmp_path):
    env, run = warm_env
    cold = launch(folds_args(tmp_path, "cold.json", "bench/cold.tsv"), {**env, "AFFECT_WARM": "0"}, tmp_path)
    assert cold.returncode == 0, cold.stderr
    launch(["--help"], env, tmp_path)
    sock = wait_for_server(run)
    warm = launch(folds_args(tmp_path, "warm.json", "bench/warm.tsv"), env, tmp_path)
    assert warm.returncode == 0, warm.stderr
    assert "['make_folds']" in sock.with_suffix(".log").read_text()            # forked by the server
    (tmp_path / "params.json").unlink()
    for mode in ("cold", "warm"):
        rec = read_record(tmp_path / "bench" / f"{mode}.tsv")
        assert float(rec["max_rss"]) >= 300, (mode, rec)     # the launcher alone: ~20 MB
        assert float(rec["cpu_time"]) > 0.05 and float(rec["s"]) >= 0.1, (mode, rec)
        assert 0 < float(rec["mean_load"]) <= 100 * os.cpu_count() + 1, (mode, rec)
        for col in ("max_vms", "max_uss", "max_pss", "io_in", "io_out"):
            float(rec[col])                                      # measured (psutil is installed)


def test_a_failed_job_writes_no_benchmark(warm_env, tmp_path):
    env, run = warm_env
    args = folds_args(tmp_path, "x.json", "b.tsv", big=False)
    args[args.index("--labels") + 1] = str(tmp_path / "missing.h5")
    p = launch(args, {**env, "AFFECT_WARM": "0"}, tmp_path)
    assert p.returncode == 1 and not (tmp_path / "b.tsv").exists()


def test_the_record_reads_like_snakemakes_own(tmp_path):
    """One rule measured by Snakemake's benchmark: directive, one by the job through a declared
    output, as the workflow's rules do: same header, same number formats, and Snakemake leaves the
    job's file as the job wrote it."""
    _tiny_task(tmp_path / "labels.h5", tmp_path / "videos.tsv")
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        rule all:
            input: "sampled.tsv", "own.tsv"

        rule sampled:
            output: "sampled.txt"
            benchmark: "sampled.tsv"
            shell: "{PY} -c 'import time; time.sleep(1.2)' > {{output}}"

        rule own:
            output: folds="folds.json", bench="own.tsv"
            shell:
                "{PY} -m affect_pipeline.warm make_folds --task VA --labels labels.h5 --index videos.tsv"
                " --out {{output.folds:q}} --params '{{{{\\"k\\": 2, \\"seed\\": 0}}}}' --benchmark {{output.bench:q}}"
    """))
    p = subprocess.run([SNAKEMAKE, "--cores", "1", "--snakefile", "Snakefile", "--workflow-profile", "none"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "AFFECT_WARM": "0"})
    assert p.returncode == 0, p.stderr[-3000:]
    theirs = (tmp_path / "sampled.tsv").read_text().splitlines()
    ours = (tmp_path / "own.tsv").read_text().splitlines()
    assert ours[0] == theirs[0]
    assert len(ours) == len(theirs) == 2

    def shape(cell: str) -> str:
        import re

        return re.sub(r"\d+", "9", cell)

    assert [shape(c) for c in ours[1].split("\t")] == [shape(c) for c in theirs[1].split("\t")]
    assert float(read_record(tmp_path / "own.tsv")["max_rss"]) > 0


def test_every_benchmarked_rule_lets_the_job_measure_itself():
    """No rule leaves its benchmark to Snakemake's sampler (it would record the warm launcher):
    each declares the file as output ``bench`` and passes it to the stage as ``--benchmark``."""
    from conftest import REPO
    from test_package_layout import rule_blocks

    benched = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        assert not [ln for ln in text.splitlines() if ln.strip() == "benchmark:"], f"{smk.name}: a benchmark: directive"
        for name, block in rule_blocks(text).items():
            if 'bench="results/benchmarks/' in block:
                benched[name] = "--benchmark {output.bench:q}" in block
    assert benched and all(benched.values()), benched
    assert {"train_blb", "predict", "crop_faces", "audio_features", "pretrain_mae"} <= set(benched)


def test_benchmark_argument_and_ranks(monkeypatch):
    from affect_pipeline.common.jobstats import split_benchmark

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("RANK", "3")                      # a RANK of something else: still recorded
    assert split_benchmark(["--out", "o", "--benchmark", "b.tsv", "--x"]) == (["--out", "o", "--x"], "b.tsv")
    assert split_benchmark(["--benchmark=b.tsv"]) == ([], "b.tsv")
    assert split_benchmark(["--out", "o"]) == (["--out", "o"], None)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "r1")       # torchrun: rank 0 records, for every rank
    assert split_benchmark(["--benchmark", "b.tsv"]) == ([], None)
    monkeypatch.setenv("RANK", "0")
    assert split_benchmark(["--benchmark", "b.tsv"]) == ([], "b.tsv")
