"""What a run records: its MLflow run (runs), the training loop's records as metrics (metrics), the logged
and registered models (models), the curves for `dvc plots` (plots) and `gptcore ui` (ui).

Imports: the base, training, serving.
"""
