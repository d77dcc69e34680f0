"""The ABAW tasks: their names, label columns, output sizes and invalid-label markers."""

TASKS = ("AU", "EXPR", "VA", "ERI")
FRAME_TASKS = ("AU", "EXPR", "VA")

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
