"""What the Snakemake report shows: each figure's fixed file name, title, category and caption.

Imported by rules/submit.smk at parse time, so it imports nothing heavy (the drawing is in
:mod:`affect_pipeline.submit.figures`, the stage in :mod:`affect_pipeline.submit.report_plots`). File names
never depend on the data, so the rule can list them as outputs; a figure that cannot be drawn
(task off, inputs absent) is a placeholder PNG that says why. Captions are ``report/{caption}.rst``.
"""
from __future__ import annotations

from dataclasses import dataclass

from affect_pipeline.common.tasks import TASKS


@dataclass(frozen=True)
class Figure:
    name: str        # PNG under results/report/
    title: str       # shown on a placeholder
    category: str    # Snakemake report category
    caption: str     # report/{caption}.rst


FIGURES = (
    Figure("curves_pretrain.png", "MAE pretraining curve", "Training", "pretrain"),
    *(Figure(f"curves_{t}.png", f"{t} training curves", "Training", "curves") for t in TASKS),
    Figure("confusion_EXPR.png", "EXPR confusion matrix", "Validation", "confusion"),
    Figure("au_f1.png", "AU F1 per action unit", "Validation", "au_f1"),
    Figure("va_scatter.png", "VA prediction vs truth", "Validation", "va_scatter"),
    Figure("eri_pcc.png", "ERI PCC per emotion", "Validation", "eri_pcc"),
    Figure("ablation.png", "ablation table", "Metrics", "ablation"),
    Figure("timelines.png", "per-frame timelines", "Submission", "timelines"),
    Figure("faces_contact_sheet.png", "face crops", "Data", "faces"),
)
REPORT_FILES = tuple(f.name for f in FIGURES)
BY_NAME = {f.name: f for f in FIGURES}


def report_files() -> list[str]:
    return list(REPORT_FILES)


def caption_file(name: str, prefix: str = "../report") -> str:
    """The caption path a rule in rules/ gives ``report(..., caption=...)``."""
    return f"{prefix}/{BY_NAME[name].caption}.rst"
