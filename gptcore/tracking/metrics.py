"""The training loop's records as MLflow metrics: per-step metrics buffered and sent in batches, the
evaluations' and epoch ends' at once, under the names the CSV files of `dvc plots` use."""

from __future__ import annotations

from ..training.callbacks import RECORD_KEYS, TrainerCallback
from .plots import CURVES
from .runs import Tracker, as_metrics

# per-step metrics: the curves of plots/train.csv under "train/<column>", plus speed; an evaluation's as "eval/<key>"
STEP_METRICS = {f"train/{column}": key for column, key in CURVES["train"].items()} | \
    {"train/tokens_per_second": "tokens_per_second"}


class TrackingCallback(TrainerCallback):
    """Buffers per-step metrics and sends them in one batch every log_every steps (and at evaluations)."""

    def __init__(self, tracker: Tracker, log_every: int = 10, logged_through: dict | None = None):
        self.tracker, self.log_every = tracker, log_every
        self.logged_through = logged_through or {}  # a continued run's last step of each metric (Tracker.resume)
        self.pending = []

    def queue(self, values: dict, step: int):
        """values at step, but those the run already holds."""
        self.pending += as_metrics({name: value for name, value in values.items()
                                    if step > self.logged_through.get(name, -1)}, step)

    def on_step(self, record: dict):
        self.queue({name: record[key] for name, key in STEP_METRICS.items()}, record["step"])
        if record["step"] % self.log_every == 0:
            self.flush()

    def on_eval(self, record: dict):  # the losses, and what else the task measures (DPO's rewards)
        self.log_measured("eval", record)

    def on_epoch(self, record: dict):
        self.log_measured("eval", record)

    def on_zero_shot(self, record: dict):
        self.log_measured("zero_shot", record)

    def log_measured(self, prefix: str, record: dict):
        """A record's measurements as <prefix>/<key> at its step, sent now."""
        self.queue({f"{prefix}/{key}": value for key, value in record.items() if key not in RECORD_KEYS},
                   record["step"])
        self.flush()

    def on_sample(self, record: dict):
        self.tracker.log_text(record["text"], f"training_samples/step-{record['step']:07d}.txt")

    def on_train_end(self, history: dict):
        self.flush()

    def flush(self):
        for start in range(0, len(self.pending), 1000):  # MLflow takes at most 1000 metrics per batch
            self.tracker.client.log_batch(self.tracker.run_id, metrics=self.pending[start:start + 1000])
        self.pending = []
