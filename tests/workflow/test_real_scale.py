"""The DAG at the real sizes of the paper's two datasets: Aff-Wild2 (600 videos, 12 of them split
into _left / _right ids) and Hume-Reaction (25,067 clips: 15,806 train / 4,657 validation / 4,604
test, ABAW5), placeholder media, the default config with only the data keys set. The job count
must not grow with the number of clips, and no job's command line may carry a per-video list.
The dry-run time is measured by benchmarks/bench_dag.py, not here."""
import re

import yaml
from aff_tree import HUME_SIZES, make_hume_tree, make_tree, placeholder_audio_weights
from conftest import run_snakemake

#: Linux refuses a single argument over 128 KiB (MAX_ARG_STRLEN): Snakemake runs each job's shell
#: command as one argument of bash -c
ARG_MAX = 128 * 1024


def real_scale_config(tmp_path):
    data = make_tree(tmp_path / "aff", 600, pair_every=50)
    data.update(make_hume_tree(tmp_path / "hume"))
    data["tasks"] = ["AU", "EXPR", "VA", "ERI"]
    data["audio"] = placeholder_audio_weights(tmp_path)
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def job_counts(out: str) -> dict[str, int]:
    rows = [ln.split() for ln in out.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def test_real_sizes_plan_in_few_jobs_with_no_list_on_a_command_line(tmp_path):
    assert sum(HUME_SIZES.values()) == 25067
    cfg = real_scale_config(tmp_path)
    p = run_snakemake("-n", "-p", "submission", "--configfile", str(cfg), "--directory", str(tmp_path / "run"))
    out = p.stdout + p.stderr
    counts = job_counts(out)
    # decoding and faces: 32 stable batches per dataset each (resources.media_batches), whatever the
    # number of clips; before the batches: 25,667 extract_frames jobs, 26,054 in all
    assert counts["extract_frames"] == 64 and counts["crop_faces"] == 64, counts
    assert counts["index_dataset"] == 1 and counts["audio_features"] == 3 and counts["visual_features_eri"] == 1
    assert counts["total"] <= 2000, counts
    # each job's shell command, as -p prints it (`rule NAME:`, its fields, `Shell command: ...`)
    longest: dict[str, int] = {}
    rule = None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if m:
            rule = m.group(1)
        elif line.startswith("Shell command: ") and rule:
            longest[rule] = max(longest.get(rule, 0), len(line.encode()) - len("Shell command: "))
            rule = None
    listed = ("extract_frames", "crop_faces", "index_dataset", "audio_features", "pretrain_mae", "visual_features",
              "visual_features_eri")
    assert {*listed, "ensemble", "report_plots"} <= set(longest), longest
    too_long = {r: n for r, n in longest.items() if n > ARG_MAX}
    assert not too_long, too_long
    # the per-video lists travel in files (rules/common.smk list_files): these commands are short
    for rule in listed:
        assert longest[rule] < 8 * 1024, (rule, longest[rule])
    print(f"\nlongest shell command per rule (bytes): {dict(sorted(longest.items()))}")
