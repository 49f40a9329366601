"""Loss on windows of a split: the book's calc_loss_loader, during training and for the evaluate stage."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.loaders import GPTDataset, make_dataloader, to_device
from ..data.shards import load_split
from ..model.gpt import GPT
from ..model.runtime import Runtime
from ..training import distributed


@torch.no_grad()
def evaluate_loss(model: GPT, batches, *, num_batches: int | None, runtime: Runtime) -> float:
    """Mean loss over the first num_batches batches (all when None); a batch is the model's arguments.

    Under DDP the processes share the batches out (batch i goes to rank i mod world size).
    """
    ranks = distributed.current()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for index, batch in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            break
        if index % ranks.world_size != ranks.rank:
            continue
        with runtime.autocast():
            _, loss = model(*to_device(batch, runtime.device))
        total += loss.item()
        count += 1
    model.train(was_training)
    total, count = distributed.all_reduce_sum([total, count], runtime.device)
    return total / count if count else float("nan")


@torch.no_grad()
def evaluate_splits(model: GPT, tokens_dir: Path, *, batch_size: int, max_batches: int | None,
                    runtime: Runtime) -> dict:
    """Loss and perplexity over non-overlapping windows of each split (all of them unless max_batches),
    and the evaluation's tokens per second."""
    context = model.config.context_length
    metrics, tokens, seconds = {}, 0, 0.0
    for split in ("train", "val"):
        windows = GPTDataset(load_split(tokens_dir, split), context, context, split)
        loader = make_dataloader(windows, batch_size=batch_size, shuffle=False, drop_last=False, seed=0,
                                 split=split)
        batches = len(loader) if max_batches is None else min(len(loader), max_batches)
        started = time.perf_counter()
        bar = tqdm(loader, total=batches, desc=f"evaluate {split}", unit="batch", disable=not sys.stderr.isatty())
        loss = evaluate_loss(model, bar, num_batches=batches, runtime=runtime)
        bar.close()
        seconds += time.perf_counter() - started
        tokens += min(len(windows), batches * batch_size) * context
        metrics[f"{split}_loss"] = loss
        metrics[f"{split}_perplexity"] = math.exp(loss)
    metrics["tokens_per_second"] = tokens / seconds
    return metrics
