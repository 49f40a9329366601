"""Stage evaluate: models/ + data/tokens -> metrics/eval.json (loss, perplexity, evaluation tokens/s)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from gptcore.atomic import atomic_write_text
from gptcore.checkpoint import load_model
from gptcore.datasets import GPTDataset, make_dataloader
from gptcore.runtime import describe_runtime, pick_device, resolve_precision, set_cpu_threads
from gptcore.stage import run_stage, stage_params, stage_tracker
from gptcore.token_files import load_tokens
from gptcore.trainer import evaluate_loss


def evaluate(settings: dict, model_dir: Path, tokens_dir: Path) -> dict:
    """Mean loss over non-overlapping windows of each split (all of them unless max_batches is set)."""
    device = pick_device(settings["device"])
    threads = set_cpu_threads() if device.type == "cpu" else torch.get_num_threads()
    precision = resolve_precision(settings["precision"], device)
    model = load_model(model_dir).to(device)
    context = model.config.context_length
    metrics, tokens, seconds = {}, 0, 0.0
    for split in ("train", "val"):
        windows = GPTDataset(load_tokens(tokens_dir / f"{split}.bin"), context, context, split)
        loader = make_dataloader(windows, settings["batch_size"], False, False, 0, split)
        batches = len(loader) if settings["max_batches"] is None else min(len(loader), settings["max_batches"])
        started = time.perf_counter()
        bar = tqdm(loader, total=batches, desc=f"evaluate {split}", unit="batch", disable=not sys.stderr.isatty())
        loss = evaluate_loss(model, bar, batches, precision, device)
        bar.close()
        seconds += time.perf_counter() - started
        tokens += min(len(windows), batches * settings["batch_size"]) * context
        metrics[f"{split}_loss"] = loss
        metrics[f"{split}_perplexity"] = math.exp(loss)
    metrics["tokens_per_second"] = tokens / seconds
    metrics["runtime"] = describe_runtime(device, precision, threads)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", default="models", type=Path)
    parser.add_argument("--tokens", default="data/tokens", type=Path)
    parser.add_argument("--metrics", default="metrics/eval.json", type=Path)
    args = parser.parse_args()
    params = stage_params("evaluate", "tracking", path=args.params)
    tracker = stage_tracker(params, args.models, "evaluate", "evaluate")
    with torch.no_grad():
        metrics = evaluate(params["evaluate"], args.models, args.tokens)
    atomic_write_text(args.metrics, json.dumps(metrics, indent=2) + "\n")
    if tracker:
        tracker.log_metrics({f"eval_{k}": v for k, v in metrics.items() if k != "runtime"})
        tracker.finish()
    print(f"train loss {metrics['train_loss']:.3f} (perplexity {metrics['train_perplexity']:.1f}), validation "
          f"loss {metrics['val_loss']:.3f} (perplexity {metrics['val_perplexity']:.1f})")


if __name__ == "__main__":
    run_stage(main)
