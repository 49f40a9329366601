"""Stage train: data/tokens -> models/ (weights + config), metrics/train.json, plots/ (CSV + PNG).

With train.nproc > 1 the stage reruns itself under torchrun (DDP, one process per share of the
machine); rank 0 tracks and writes every output. For several machines, start
`torchrun ... stages/train.py` on each (see README).

Resume checkpoints live in <repo>/checkpoints/<run key>/ (git-ignored, outside DVC's outputs): a killed
stage continues from the last checkpoint on the next `dvc repro`; the key changes with the params and
the data, so another experiment never resumes this one's state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from gptcore import distributed
from gptcore.atomic import atomic_write_text
from gptcore.checkpoint import initialize_model, latest_checkpoint, save_model
from gptcore.params import model_config
from gptcore.runtime import describe_runtime
from gptcore.plots import draw_plots, write_plot_data
from gptcore.stage import run_stage, stage_params
from gptcore.token_files import load_tokens
from gptcore.tokenizer import Tokenizer
from gptcore.tracking import RUN_FILE, Tracker, TrackingCallback, repo_root
from gptcore.trainer import PrintProgress, TrainConfig, Trainer


def train(params: dict, tokens_dir: Path, model_dir: Path, metrics_file: Path, plots_dir: Path) -> dict | None:
    """Train and write the outputs; the metrics (None in the processes other than rank 0 under DDP)."""
    is_main = distributed.current().is_main
    config = model_config(params["model"])
    meta = json.loads((tokens_dir / "meta.json").read_text())
    run_key = hashlib.sha256(json.dumps([params["model"], params["train"], meta["splits"]],
                                        sort_keys=True).encode()).hexdigest()[:16]
    checkpoint_dir = repo_root() / "checkpoints" / run_key
    torch.manual_seed(params["train"]["seed"])
    model = initialize_model(config, params["model"]["init_from"])
    callbacks, tracker = [PrintProgress()], None
    if params["tracking"]["enabled"] and is_main:
        tracker = resume_or_start_run(params, checkpoint_dir)
        callbacks.append(TrackingCallback(tracker, params["tracking"]["log_every"]))
    train_config = TrainConfig(**{k: v for k, v in params["train"].items() if k != "nproc"})
    trainer = Trainer(model, train_config, load_tokens(tokens_dir / "train.bin"),
                      load_tokens(tokens_dir / "val.bin"), Tokenizer(), checkpoint_dir, callbacks)
    if trainer.resume() and is_main:
        print(f"resuming from step {trainer.step} ({checkpoint_dir})")
    started = time.perf_counter()
    history = trainer.fit()
    if not is_main:
        return None
    steps, last_eval = history["steps"], history["evals"][-1]
    metrics = {"train_loss": last_eval["train_loss"], "val_loss": last_eval["val_loss"],
               "steps": trainer.step, "tokens_seen": trainer.tokens_seen,
               "tokens_per_second": sum(s["tokens_per_second"] for s in steps) / len(steps),
               "parameters": model.num_parameters(),
               "wall_seconds_this_session": time.perf_counter() - started,
               "runtime": describe_runtime(trainer.device, trainer.precision, trainer.threads,
                                           distributed.current().world_size)}
    save_model(model, model_dir)
    write_plot_data(history, plots_dir)
    pictures = draw_plots(history, plots_dir)
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    if tracker:
        tracker.write_run_file(model_dir)
        tracker.log_metrics({f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                            trainer.step)
        tracker.set_tags({f"runtime.{k}": v for k, v in metrics["runtime"].items()})
        for picture in pictures:
            tracker.log_artifact(picture, "plots")
        tracker.finish()
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    return metrics


def resume_or_start_run(params: dict, checkpoint_dir: Path) -> Tracker:
    """Reattach to the MLflow run of an interrupted training run, or start the pipeline's run."""
    if latest_checkpoint(checkpoint_dir) is not None and (checkpoint_dir / RUN_FILE).is_file():
        return Tracker.attach(params["tracking"], checkpoint_dir, {}, "train")
    tracker = Tracker.start(params["tracking"], name=f"{params['model']['preset']}-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"model_preset": params["model"]["preset"]},
                            params={k: params[k] for k in ("data", "model", "train", "tracking")})
    tracker.write_run_file(checkpoint_dir)
    return tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tokens", default="data/tokens", type=Path)
    parser.add_argument("--models", default="models", type=Path)
    parser.add_argument("--metrics", default="metrics/train.json", type=Path)
    parser.add_argument("--plots", default="plots", type=Path)
    args = parser.parse_args()
    params = stage_params("data", "model", "train", "tracking", path=args.params)
    if params["train"]["nproc"] > 1 and not distributed.launched_by_torchrun():
        distributed.check_process_count(params["train"]["nproc"], params["train"]["device"])
        sys.exit(distributed.run_with_torchrun(params["train"]["nproc"], __file__, sys.argv[1:]))
    distributed.init_distributed(params["train"]["device"])
    try:
        metrics = train(params, args.tokens, args.models, args.metrics, args.plots)
    finally:
        distributed.shutdown()
    if metrics is None:
        return
    print(f"trained {metrics['steps']} steps: train loss {metrics['train_loss']:.3f}, "
          f"validation loss {metrics['val_loss']:.3f}, {metrics['tokens_per_second']:.0f} tokens/s")


if __name__ == "__main__":
    run_stage(main)
