"""params.yaml `tracking`: the MLflow run of each pipeline execution (gptcore.tracking)."""

from dataclasses import dataclass

from . import check_fields, setting


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = setting(True, "log the run to MLflow")
    experiment: str = setting("gptcore", "MLflow experiment name")
    log_every: int = setting(10, "send per-step metrics in batches of this many steps", low=1)
    on_unreachable: str = setting("fail", "MLFLOW_TRACKING_URI down: fail before training, or log locally",
                                  choices=("fail", "local"))

    def __post_init__(self):
        check_fields(self, "tracking")
