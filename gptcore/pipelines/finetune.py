"""What the fine-tuning pipelines share (gptcore.pipelines.classify, gptcore.pipelines.instruct): the key of
a run's checkpoint folder, the tracked fit in the one training loop (resuming an interrupted run and its
MLflow run), its end, and an evaluation's numbers and files added to the run that trained the model.

Each fine-tune stage starts its pipeline's MLflow run (curves, the model, registered as a pyfunc) and
records its id next to the model; the later stages add their metrics and files to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import keys_renamed
from ..params import Params
from ..settings.tracking import TrackingConfig
from ..settings.train import TrainConfig
from ..tracking.metrics import TrackingCallback
from ..tracking.runs import RUN_FILE, Tracker
from ..training.callbacks import PrintProgress
from ..training.trainer import Trainer


def pipeline_tracking(params: Params, section: str) -> TrackingConfig:
    """The tracking settings of the pipeline of params.yaml's `section` (classify, instruct): its own experiment."""
    return dataclasses.replace(params.tracking, experiment=getattr(params, section).experiment)


def run_key(params: Params, splits_dir: Path, sections: tuple[str, ...]) -> str:
    """What names a run's checkpoint folder: its sections but tracking, and its prepared data."""
    meta = json.loads((Path(splits_dir) / "meta.json").read_text())
    key = json.dumps([{k: params.values[k] for k in sections if k != "tracking"}, meta], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fit_tracked(model, task, config: TrainConfig, section: str, tracking: TrackingConfig, checkpoint_dir: Path, *,
                stage: str, tags: dict, params: dict, dataset: tuple) -> tuple[Trainer, dict, Tracker | None, float]:
    """Fine-tune on a task in the one training loop with config, params.yaml's `section` (which the loop's errors
    name), resuming an interrupted run and continuing its MLflow run (also one killed before its first
    checkpoint); a new run logs params and the dataset (Tracker.log_dataset's arguments). (trainer, history,
    tracker, seconds)."""
    tracker = None
    if tracking.enabled:
        if (checkpoint_dir / RUN_FILE).is_file():
            tracker = Tracker.resume(tracking, checkpoint_dir)
        if tracker is None:
            tracker = Tracker.start(tracking, name=f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags,
                                    params=params)
            tracker.log_dataset(*dataset)
            tracker.write_run_file(checkpoint_dir)
    callbacks = [PrintProgress()] + \
        ([TrackingCallback(tracker, tracking.log_every, tracker.logged_through)] if tracker else [])
    with keys_renamed("train", lambda key: f"{section}.{key}"):
        trainer = Trainer(model, config, task, checkpoint_dir=checkpoint_dir, callbacks=callbacks)
    if tracker:
        tracker.tag_runtime(trainer.runtime.describe())
    if trainer.resume():
        print(f"resuming from step {trainer.step} ({checkpoint_dir})")
    started = time.perf_counter()
    history = trainer.fit()
    return trainer, history, tracker, time.perf_counter() - started


def finish_tracked(tracker: Tracker | None, trainer: Trainer, model_dir: Path, checkpoint_dir: Path, seconds: float,
                   registered_model: str | None, log_model) -> None:
    """After the model is saved: point it at its run, log the wall time and the model (log_model(), which
    returns the registered version), end the run; the checkpoints go."""
    if tracker:
        tracker.write_run_file(model_dir, step=trainer.step)
        tracker.log_metrics({"train/wall_seconds": seconds}, trainer.step)
        version = log_model()
        if version:
            print(f"registered model {registered_model!r} version {version}")
        tracker.finish()
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def log_evaluation(tracking: TrackingConfig, model_dir: Path, stage: str, metrics: dict, runtime: dict,
                   artifacts=()) -> None:
    """The evaluation's numbers (evaluate/<name>), what made them (tags evaluate.runtime.*) and files
    (evaluation/) in the run that trained the model."""
    if not tracking.enabled:
        return
    tracker = Tracker.attach(tracking, model_dir, {}, stage)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.log_metrics({f"evaluate/{k}": v for k, v in numbers.items()}, tracker.last_step)
    tracker.tag_runtime(runtime, "evaluate.runtime")
    for path in artifacts:
        tracker.log_artifact(path, "evaluation")
    tracker.finish()


def responses_markdown(entries: list[dict], title: str,
                       shown: tuple[tuple[str, str], ...] = (("Reference", "output"), ("Model", "model_response"))) -> str:
    """The test responses for a person to read: each instruction, its input, then each (label, key) of shown: the
    reference and the model's by default."""
    lines = [f"# {title}", ""]
    for number, entry in enumerate(entries, start=1):
        lines += [f"## {number}. {entry['instruction']}", ""]
        if entry["input"]:
            lines += [f"**Input:** {entry['input']}", ""]
        for label, key in shown:
            lines += [f"**{label}:** {entry[key]}", ""]
    return "\n".join(lines)


def write_responses(tracking: TrackingConfig, model_dir: Path, stage: str, out_dir: Path, answered: list[dict],
                    markdown: str, stats: dict, metrics: dict | None = None) -> None:
    """A pipeline's test responses -> out_dir/responses.json (the entries with their responses), responses.md and
    generation.json; the table, the markdown and metrics (at the run's last step) to the model's MLflow run."""
    import pandas as pd

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "responses.json", json.dumps(answered, indent=4, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "responses.md", markdown)
    atomic_write_text(out_dir / "generation.json", json.dumps(stats, indent=2) + "\n")
    if tracking.enabled:
        tracker = Tracker.attach(tracking, model_dir, {}, stage)
        tracker.log_table(pd.DataFrame(answered), "evaluation/responses.json")
        tracker.log_artifact(out_dir / "responses.md", "evaluation")
        if metrics:
            tracker.log_metrics(metrics, tracker.last_step)
        tracker.finish()
