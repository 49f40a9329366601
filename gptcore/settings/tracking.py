"""params.yaml `tracking`: the MLflow run of each pipeline execution (gptcore.tracking)."""

from dataclasses import dataclass

from . import check_fields, registered_model_setting, setting


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = setting(True, "log the run to MLflow")
    experiment: str = setting("gptcore", "MLflow experiment of the pretraining pipeline's runs (the fine-tuning "
                                         "pipelines have their own: classify.experiment, instruct.experiment)")
    log_every: int = setting(10, "send per-step metrics in batches of this many steps", low=1)
    on_unreachable: str = setting("fail", "MLFLOW_TRACKING_URI down: fail before training, or log locally",
                                  choices=("fail", "local"))
    registered_model: str | None = registered_model_setting(
        "gptcore", "the trained model is registered under this name in MLflow's model registry (a new version "
                   "per run); null = logged with the run, not registered")
    system_metrics_seconds: int | None = setting(10, "sample CPU, memory (and GPU) use every this many seconds "
                                                     "during training, as system/* metrics; null = off", low=1)

    def __post_init__(self):
        check_fields(self, "tracking")
