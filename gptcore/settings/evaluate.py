"""params.yaml `evaluate`: the full-split evaluation of the trained model (gptcore.evaluation.loss)."""

from dataclasses import dataclass

from . import PRECISIONS, check_fields, setting


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = setting(2, "windows per forward pass", low=1)
    max_batches: int | None = setting(None, "null = every window of both splits", low=1)
    precision: str = setting("auto", "as train.precision", choices=PRECISIONS)
    device: str = setting("auto", "as train.device")

    def __post_init__(self):
        check_fields(self, "evaluate")
