"""The DAG at the real sizes: `snakemake -n submission` and a no-op rerun over Aff-Wild2 (600
videos) + Hume-Reaction (25,067 clips), placeholder media, the default config with only the data
keys set, against Snakemake's own start-up; optionally the same at an earlier commit (before).

    python -m benchmarks.bench_dag [--before REF] [--repeat N] [--out benchmarks/RESULTS.md]

Reference (the floor): `snakemake -n` of a one-rule workflow, on the same machine in the same run.
Times are medians over ``--repeat`` runs (the dry run: after a first run in a fresh directory,
which also writes the list files and the import cache; that first run is reported too; the
machine is shared, so single runs vary). The no-op rerun: every output of the plan created
(`--summary`; batch folders as folders) and `--touch`ed, then `snakemake submission`, which must
find nothing to do. The earlier commit is measured once per figure (its runs take minutes). ``--before REF``: the same on
``git archive REF`` (its package first on PYTHONPATH); where the default config does not plan
there (the 128 KiB --batch argument of crop_faces), with ``face_batches: 128`` as the issue did.
``--out PAGE`` replaces the ``dag`` section of the results page (benchmarks/results_page.py) and
nothing else. Goals: <= 2,000 jobs; dry run and no-op rerun <= 15 s over the floor.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
GOAL_JOBS, GOAL_OVER_S = 2000, 15.0
#: a batch folder (a directory output): created as a folder for the no-op rerun
BATCH_DIR = re.compile(r"^results/(frames|audio|faces)/(affwild2|hume)_\d+$")


def make_config(tmp: Path, extra: dict | None = None) -> Path:
    """The real-size trees and a config with only the data keys (+ placeholder audio weights)."""
    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    from aff_tree import make_hume_tree, make_tree

    data = make_tree(tmp / "aff", 600, pair_every=50)
    data.update(make_hume_tree(tmp / "hume"))
    data["tasks"] = ["AU", "EXPR", "VA", "ERI"]
    for m in ("hubert", "wav2vec2"):
        (tmp / m).mkdir(exist_ok=True)
        data.setdefault("audio", {})[m] = {"weights": str(tmp / m)}
    (tmp / "vggish.pth").write_bytes(b"")
    data["audio"]["vggish"] = {"weights": str(tmp / "vggish.pth")}
    cfg = tmp / "data.yaml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    return cfg


def timed(cmd, **kw) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return time.perf_counter() - t, p


def job_counts(text: str) -> dict[str, int]:
    rows = [ln.split() for ln in text.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def floor(tmp: Path, repeat: int) -> float:
    """Snakemake's own start-up: a dry run of a one-rule workflow."""
    d = tmp / "floor"
    d.mkdir(exist_ok=True)
    (d / "Snakefile").write_text('rule a:\n    output: "x"\n    shell: "touch x"\n', encoding="utf-8")
    return statistics.median(timed([SNAKEMAKE, "-n", "--cores", "1", "-q", "rules"], cwd=d)[0] for _ in range(repeat))


def checkout(ref: str, dest: Path) -> Path:
    """``ref``'s tracked files at ``dest`` (git archive: no worktree, the repository untouched)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def measure(code: Path, configs: list[Path], work: Path, repeat: int, noop: bool = True) -> dict:
    """Jobs, dry-run times (first, median of the next ``repeat``) and the no-op rerun of ``code``."""
    env = {**__import__("os").environ, "PYTHONPATH": str(code), "AFFECT_WARM": "0"}
    base = [SNAKEMAKE, "--snakefile", str(code / "Snakefile"), "--configfile", *map(str, configs),
            "--directory", str(work), "--cores", "1"]
    first, p = timed(base + ["-n", "submission", "--quiet", "rules"], env=env)
    out = {"ok": p.returncode == 0, "first": first, "error": "" if p.returncode == 0 else _error(p)}
    if not out["ok"]:
        return out
    out["counts"] = job_counts(p.stdout + p.stderr)
    out["dry"] = statistics.median(timed(base + ["-n", "submission", "--quiet", "rules"], env=env)[0]
                                   for _ in range(repeat))
    if noop:
        out["noop"], out["noop_ok"] = no_op(base, work, env, repeat)
    return out


def no_op(base: list[str], work: Path, env: dict, repeat: int = 1) -> tuple[float, bool]:
    """Every planned output in place and touched, then `snakemake submission` (median of
    ``repeat`` runs), which must find nothing to do."""
    p = subprocess.run(base + ["-n", "submission", "--summary"], capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines()[1:]:
        if line.count("\t") < 2:             # Snakemake's own messages
            continue
        f = work / line.split("\t")[0]
        if BATCH_DIR.match(line.split("\t")[0]):
            f.mkdir(parents=True, exist_ok=True)
        else:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch()
    subprocess.run(base + ["--touch", "submission", "--quiet", "all"], capture_output=True, text=True, env=env)
    runs = [timed(base + ["submission", "--quiet", "rules"], env=env) for _ in range(repeat)]
    ok = all(p.returncode == 0 and "Nothing to be done" in p.stdout + p.stderr for _, p in runs)
    return statistics.median(t for t, _ in runs), ok


def _error(p: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if "KiB" in ln), None) or next(
        (ln for ln in lines if "Error" in ln and len(ln) > 8), lines[-1] if lines else "?")
    return hit[:300]


def run(before: str | None = None, repeat: int = 3) -> dict:
    """The figures: floor, after (this checkout) and, with ``before``, that commit's."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = make_config(tmp)
        res = {"floor": floor(tmp, repeat), "after": measure(ROOT, [cfg], tmp / "after", repeat)}
        if before:
            code = checkout(before, tmp / "before_code")
            res["before_default"] = measure(code, [cfg], tmp / "before_default", 1)
            if not res["before_default"]["ok"] and "face_batches" in (code / "workflow_config.yaml").read_text(encoding="utf-8"):
                forced = tmp / "face_batches_128.yaml"
                forced.write_text("resources: {face_batches: 128}\n", encoding="utf-8")
                res["before"] = measure(code, [cfg, forced], tmp / "before", 1)
                res["before"]["note"] = "face_batches: 128 set by hand (the default does not plan)"
            else:
                res["before"] = res["before_default"]
            res["before"]["ref"] = subprocess.run(["git", "rev-parse", "--short", before], cwd=ROOT,
                                                  capture_output=True, text=True).stdout.strip()
    return res


def table(res: dict) -> str:
    fl = res["floor"]
    cols = [("before", res.get("before")), ("after", res["after"])]
    cols = [(n, r) for n, r in cols if r]

    def cell(r, key, over=False):
        if not r.get("ok"):
            return "fails"
        v = r.get(key)
        if v is None:
            return "—"
        return f"{v:.1f} s ({v - fl:+.1f} s)" if over else f"{v:.1f} s"

    def jobs(r):
        if not r.get("ok"):
            return "fails"
        c = r["counts"]
        return f"{c['total']:,} (extract_frames {c.get('extract_frames', 0):,}, crop_faces {c.get('crop_faces', 0):,})"

    head = "| | " + " | ".join(f"{n}{' (' + r['ref'] + ')' if r.get('ref') else ''}" for n, r in cols) + " |"
    rows = [head, "|---|" + "---:|" * len(cols),
            "| jobs for `submission` | " + " | ".join(jobs(r) for _, r in cols) + " |",
            "| `snakemake -n submission`, first run in a fresh directory (over the floor) | "
            + " | ".join(cell(r, "first", True) for _, r in cols) + " |",
            "| `snakemake -n submission`, again (median; over the floor) | "
            + " | ".join(cell(r, "dry", True) for _, r in cols) + " |",
            "| no-op rerun `snakemake submission` (over the floor) | "
            + " | ".join(cell(r, "noop", True) + ("" if r.get("noop_ok", True) else " (ran jobs!)")
                         for _, r in cols) + " |",
            f"| floor: `snakemake -n` of a one-rule workflow | {fl:.1f} s |" + " |" * (len(cols) - 1)]
    notes = [f"- before: {r['note']}" for n, r in cols if r.get("note")]
    if res.get("before_default") and not res["before_default"]["ok"]:
        notes.append(f"- before, default config: `{res['before_default']['error']}`")
    return "\n".join(rows + ([""] + notes if notes else []))


def verdict(res: dict) -> str:
    a, fl = res["after"], res["floor"]
    if not a.get("ok"):
        return f"Missed: the dry run fails ({a['error']})."
    missed = ([f"{a['counts']['total']:,} jobs > {GOAL_JOBS:,}"] if a["counts"]["total"] > GOAL_JOBS else []) + \
        [f"{name} {a[k] - fl:.1f} s over the floor > {GOAL_OVER_S:.0f} s"
         for k, name in (("dry", "dry run"), ("noop", "no-op rerun")) if a.get(k) and a[k] - fl > GOAL_OVER_S] + \
        (["the no-op rerun ran jobs"] if not a.get("noop_ok", True) else [])
    return f"Missed: {'; '.join(missed)}." if missed else \
        f"Goals met: <= {GOAL_JOBS:,} jobs, dry run and no-op rerun <= {GOAL_OVER_S:.0f} s over the floor."


INTRO = """## The DAG at the real sizes: dry run and no-op rerun

`submission` over Aff-Wild2 (600 placeholder videos, 12 split into `_left` / `_right` ids) and
Hume-Reaction at its ABAW5 size (25,067 clips: 15,806 train / 4,657 validation / 4,604 test;
tests/aff_tree.py), all four tasks, per-fold CV, the default config with only the data keys (and
placeholder audio weights) set: job count, `snakemake -n submission`, and a rerun with every output
in place. Reference: `snakemake -n` of a one-rule workflow on the same machine in the same run
(Snakemake's own start-up, the floor). Goals: <= 2,000 jobs; dry run and no-op rerun <= 15 s over
the floor."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=None, metavar="REF", help="also measure this commit (e.g. HEAD)")
    ap.add_argument("--repeat", type=int, default=3, help="dry runs per median")
    ap.add_argument("--out", type=Path, default=None, metavar="PAGE",
                    help="replace the `dag` section of this results page, e.g. benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    res = run(a.before, a.repeat)
    text = f"{table(res)}\n\n{verdict(res)}"
    print(text)
    if a.out:
        from benchmarks.results_page import machine, stamp, update_page

        cmd = "python -m benchmarks.bench_dag" + (f" --before {a.before}" if a.before else "") + f" --repeat {a.repeat}"
        update_page(a.out, {"dag": f"{INTRO}\n\n{stamp(machine(), cmd)}\n\n{text}"})
        print(f"updated section dag of {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
