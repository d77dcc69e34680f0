"""The ABAW tasks: their names, label columns, output sizes and invalid-label markers.

The one list of tasks: code imports it; the schema's enums, which cannot, are checked against it
(tests/common/test_tasks.py).
"""

TASKS = ("AU", "EXPR", "VA", "ERI")
#: tasks labelled per frame (Aff-Wild2); ERI (Hume-Reaction) is labelled per video
FRAME_TASKS = ("AU", "EXPR", "VA")
#: tasks whose labels are classes (integers in the annotation files and submission rows)
CLASS_TASKS = ("AU", "EXPR")

AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
EXPR_NAMES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
VA_NAMES = ("valence", "arousal")
ERI_NAMES = ("Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear", "Surprise")

#: column names of each task's label matrix
TASK_COLUMNS = {"AU": AU_NAMES, "EXPR": EXPR_NAMES, "VA": VA_NAMES, "ERI": ERI_NAMES}
#: number of model outputs per frame (EXPR: 8 logits, stored labels are one class index)
TASK_OUTPUTS = {"AU": 12, "EXPR": 8, "VA": 2, "ERI": 7}
#: label value that marks an invalid annotation in the Aff-Wild2 files
INVALID_MARKER = {"AU": -1.0, "EXPR": -1.0, "VA": -5.0}
