"""rules/submit.smk: fold ensembles, the ABAW submission files, the run summary and the report."""
