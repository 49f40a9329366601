"""The training loop: AdamW, warmup + cosine LR, clipping, accumulation, mixed precision, exact resume.

Everything the loop reports goes to callbacks (per step, per evaluation, per sample, per checkpoint),
so tracking plugs in without the trainer knowing about MLflow. Under torchrun the same loop runs DDP:
each process trains on its shard of every global batch, losses are averaged over the processes, and
only rank 0 calls the callbacks and writes checkpoints.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed
from .checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, restore_rng_states, rng_states,
                         save_checkpoint)
from .datasets import GPTDataset, RandomWindows, make_dataloader
from .model import GPT
from .runtime import autocast, physical_cores, pick_device, resolve_precision, set_cpu_threads
from .sampling import generate
from .schedule import learning_rate

SAMPLINGS = ("sliding", "random")
# all: every parameter, as the book's AdamW(model.parameters(), weight_decay=...); matrices: 2-D weights
# and embeddings only, not biases and LayerNorms (GPT-2, nanoGPT)
DECAY_TARGETS = ("all", "matrices")


class NonFiniteLossError(RuntimeError):
    pass


class TrainingInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C: a checkpoint was saved, the run can resume."""


@dataclass
class TrainConfig:
    epochs: int | None = 10  # training length: epochs over the sliding windows ...
    max_steps: int | None = None  # ... or optimizer steps (wins when both are set)
    batch_size: int = 2  # per process: a step sees batch_size x grad_accum_steps x processes windows
    grad_accum_steps: int = 1
    sampling: str = "sliding"  # "sliding": the seed's windows, exact epochs; "random": nanoGPT's get_batch
    stride: int | None = None  # sliding-window stride; None = context_length (no overlap)
    shuffle: bool = True
    drop_last: bool = True
    peak_lr: float = 5e-4
    initial_lr: float = 1e-5
    min_lr: float = 1e-5
    warmup_steps: int = 10
    cosine_decay: bool = True
    weight_decay: float = 0.1
    weight_decay_on: str = "all"  # one of DECAY_TARGETS
    beta1: float = 0.9
    beta2: float = 0.95
    max_grad_norm: float = 1.0  # 0 turns clipping off
    clip_after_warmup: bool = True  # clip from step warmup_steps on (the book); False: from step 0 (nanoGPT)
    eval_freq: int = 5
    eval_iter: int = 5
    sample_prompt: str = "Every effort moves you"
    sample_tokens: int = 50
    precision: str = "auto"  # auto: bf16 where the hardware runs it fast, else fp32
    compile: bool = False
    device: str = "auto"
    seed: int = 123
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at the end (and on SIGTERM)
    threads: int | None = None  # CPU intra-op threads per process; None = the physical cores shared out


def build_optimizer(model: GPT, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter (the book) or on 2-D tensors only (nanoGPT)."""
    if config.weight_decay_on not in DECAY_TARGETS:
        raise ValueError(f"weight_decay_on must be one of {DECAY_TARGETS}, got {config.weight_decay_on!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if config.weight_decay_on == "all":
        groups = [{"params": params, "weight_decay": config.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(config.beta1, config.beta2), fused=fused)


@torch.no_grad()
def evaluate_loss(model: GPT, batches, num_batches: int | None, precision: str, device: torch.device) -> float:
    """Mean loss over the first num_batches batches (all when None), as the seed's calc_loss_loader.

    Under DDP the processes share the batches out (batch i goes to rank i mod world size).
    """
    place = distributed.current()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for index, (inputs, targets) in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            break
        if index % place.world_size != place.rank:
            continue
        with autocast(precision, device):
            _, loss = model(inputs.to(device), targets.to(device))
        total += loss.item()
        count += 1
    model.train(was_training)
    total, count = distributed.all_reduce_sum([total, count], device)
    return total / count if count else float("nan")


class TrainerCallback:
    def on_train_start(self, step: int, total_steps: int): ...

    def on_step(self, record: dict): ...

    def on_eval(self, record: dict): ...

    def on_sample(self, record: dict): ...

    def on_checkpoint(self, path: Path, step: int): ...

    def on_train_end(self, history: dict): ...


class PrintProgress(TrainerCallback):
    """The seed's console log (losses at each evaluation, the sample text at each epoch end) and, on a
    terminal only, a progress bar with the loss, tokens/s and the time left."""

    def __init__(self, bar: bool | None = None):
        self.show_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None

    def on_train_start(self, step: int, total_steps: int):
        self.bar = tqdm(total=total_steps, initial=step, unit="step", desc="train", disable=not self.show_bar,
                        dynamic_ncols=True)

    def on_step(self, record: dict):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                                 tokens_per_s=f"{record['tokens_per_second']:,.0f}", refresh=False)
            self.bar.update()

    def on_eval(self, record: dict):
        self._print(f"step {record['step']:6d} | tokens {record['tokens_seen']:9,d} | train loss "
                    f"{record['train_loss']:.3f} | val loss {record['val_loss']:.3f}")

    def on_sample(self, record: dict):
        self._print(f"epoch {record['epoch'] + 1} sample: {record['text']}")

    def on_train_end(self, history: dict):
        if self.bar is not None:
            self.bar.close()

    @staticmethod
    def _print(line: str):
        tqdm.write(line)  # above the bar, which stays at the bottom
        sys.stdout.flush()


class Trainer:
    def __init__(self, model: GPT, config: TrainConfig, train_tokens: np.ndarray, val_tokens: np.ndarray,
                 tokenizer=None, checkpoint_dir=None, callbacks=()):
        if config.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {config.sampling!r}")
        self.place = place = distributed.current()
        self.config, self.tokenizer = config, tokenizer
        self.callbacks = list(callbacks) if place.is_main else []
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and place.enabled:
            self.device = torch.device("cuda", place.local_rank)
        self.threads = set_cpu_threads(config.threads or max(1, physical_cores() // place.local_world_size)) \
            if self.device.type == "cpu" else torch.get_num_threads()
        self.precision = resolve_precision(config.precision, self.device)
        self.model = model.to(self.device)
        context = model.config.context_length
        self.train_windows = GPTDataset(train_tokens, context, config.stride or context, "train")
        self.val_windows = GPTDataset(val_tokens, context, context, "validation")
        self.train_loader = make_dataloader(self.train_windows, config.batch_size, config.shuffle,
                                            config.drop_last, config.seed, "train", place.rank, place.world_size)
        if config.sampling == "random":
            self.random_windows = RandomWindows(train_tokens, context, config.batch_size, config.seed, "train",
                                                place.rank, place.world_size)
        self.steps_per_epoch = len(self.train_loader) // config.grad_accum_steps
        if self.steps_per_epoch == 0 and config.max_steps is None:
            raise ValueError(f"one epoch gives {len(self.train_loader)} batches, fewer than grad_accum_steps "
                             f"({config.grad_accum_steps}); lower it or set max_steps")
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(self.model, config, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.forward = torch.compile(self.model) if config.compile else self.model
        if place.enabled:  # averages gradients over the processes during backward
            self.forward = DistributedDataParallel(
                self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.step = self.epoch = self.batches_in_epoch = self.tokens_seen = 0
        self.history = {"steps": [], "evals": [], "samples": []}
        self.stop_signal = None
        self._epoch_batches = None

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resume needs; collective under DDP (every process's RNG state, in rank order)."""
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "tokens_seen": self.tokens_seen, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "rng": distributed.all_gather(rng_states()), "history": self.history,
                "train_config": asdict(self.config)}

    def resume(self) -> bool:
        """Continue from the latest checkpoint, if there is one; corrupted ones raise CheckpointError."""
        folder = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        found = distributed.all_gather(folder.name if folder else None)
        if len(set(found)) > 1:  # e.g. a second machine that cannot see the checkpoint folder
            raise CheckpointError(f"the processes found different checkpoints in {self.checkpoint_dir} (by rank: "
                                  f"{found}); on several machines it must be on storage they all share")
        if folder is None:
            return False
        state = load_checkpoint(folder, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batches_in_epoch, self.tokens_seen = state["batches_in_epoch"], state["tokens_seen"]
        self.history = state["history"]
        if len(state["rng"]) != self.place.world_size:
            raise CheckpointError(f"checkpoint {folder} was written by {len(state['rng'])} process(es), this run "
                                  f"has {self.place.world_size}; run with {len(state['rng'])} (train.nproc) or "
                                  f"delete {self.checkpoint_dir} to start over")
        restore_rng_states(state["rng"][self.place.rank])
        return True

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint (rank 0; every process must call it under DDP); its folder on rank 0."""
        if self.checkpoint_dir is None:
            return None
        state, path = self.state_dict(), None
        if self.place.is_main:
            path = save_checkpoint(self.checkpoint_dir, self.model, state)
            for callback in self.callbacks:
                callback.on_checkpoint(path, self.step)
        distributed.barrier()
        return path

    # -- data ----------------------------------------------------------------------------------------
    def next_batch(self, micro_step: int):
        """The next training micro-batch; its content depends only on the position, so resume is exact."""
        if self.config.sampling == "random":
            return self.random_windows.batch(self.step * self.config.grad_accum_steps + micro_step)
        if self._epoch_batches is None:
            self.train_loader.sampler.set_position(self.epoch, self.batches_in_epoch)
            self._epoch_batches = iter(self.train_loader)
        self.batches_in_epoch += 1
        return next(self._epoch_batches)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        handlers = self._install_signal_handlers()
        for callback in self.callbacks:
            callback.on_train_start(self.step, self.total_steps)
        try:
            self._fit()
            for callback in self.callbacks:
                callback.on_train_end(self.history)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        return self.history

    def _fit(self):
        config = self.config
        self.model.train()
        while self.step < self.total_steps:
            started = time.perf_counter()
            lr = learning_rate(self.step, self.total_steps, config.peak_lr, config.initial_lr, config.min_lr,
                               config.warmup_steps, config.cosine_decay)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum, step_tokens = 0.0, 0
            for micro_step in range(config.grad_accum_steps):
                inputs, targets = self.next_batch(micro_step)
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                # DDP: average gradients once, after the last micro-batch
                accumulate_only = self.place.enabled and micro_step < config.grad_accum_steps - 1
                with self.forward.no_sync() if accumulate_only else nullcontext():
                    with autocast(self.precision, self.device):
                        _, loss = self.forward(inputs, targets)
                    scaled = loss / config.grad_accum_steps
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += loss.item()
                step_tokens += inputs.numel() * self.place.world_size
            (loss_sum,) = distributed.all_reduce_sum([loss_sum], self.device)
            train_loss = loss_sum / (config.grad_accum_steps * self.place.world_size)
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(
                    f"training loss is {train_loss} at step {self.step + 1}; stopped without saving, the last "
                    f"good checkpoint is kept. Lower train.peak_lr or use precision fp32/bf16")
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            clipping = config.max_grad_norm > 0 and not (config.clip_after_warmup and self.step < config.warmup_steps)
            max_norm = config.max_grad_norm if clipping else float("inf")  # inf: measure the norm, scale by 1
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens_seen += step_tokens
            seconds = time.perf_counter() - started
            epoch_done = config.sampling == "sliding" and \
                self.batches_in_epoch >= self.steps_per_epoch * config.grad_accum_steps
            record = {"step": self.step, "epoch": self.epoch, "tokens_seen": self.tokens_seen,
                      "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm, "step_seconds": seconds,
                      "tokens_per_second": step_tokens / seconds}
            self.history["steps"].append(record)
            for callback in self.callbacks:
                callback.on_step(record)
            if self.step % config.eval_freq == 0 or self.step == self.total_steps:
                self._evaluate()
            if epoch_done:
                self._sample()
                self.epoch += 1
                self.batches_in_epoch = 0
                self._epoch_batches = None
            # every process stops at the same step when any of them was signalled
            if distributed.all_reduce_sum([float(self.stop_signal is not None)], self.device)[0]:
                self.save_checkpoint()
                raise TrainingInterrupted(f"stopped by {self.stop_signal or 'a signal to another process'} at step "
                                          f"{self.step}; " + (f"checkpoint saved in {self.checkpoint_dir}, run "
                                                              "again to resume" if self.checkpoint_dir else
                                                              "no checkpoint folder set"))
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 \
                    and self.step < self.total_steps:
                self.save_checkpoint()
        if not self.history["samples"] or self.history["samples"][-1]["step"] != self.step:
            self._sample()  # random windows have no epoch ends: sample once at the end
        self.save_checkpoint()

    def _evaluate(self):
        config = self.config
        # batches of the global batch size, shared out between the processes by evaluate_loss
        batch_size = config.batch_size * self.place.world_size
        train_eval = make_dataloader(self.train_windows, batch_size, False, False, 0)
        val_eval = make_dataloader(self.val_windows, batch_size, False, False, 0, "validation")
        record = {"step": self.step, "tokens_seen": self.tokens_seen,
                  "train_loss": evaluate_loss(self.model, train_eval, config.eval_iter, self.precision,
                                              self.device),
                  "val_loss": evaluate_loss(self.model, val_eval, config.eval_iter, self.precision,
                                            self.device)}
        self.history["evals"].append(record)
        for callback in self.callbacks:
            callback.on_eval(record)

    def _sample(self):
        if not self.place.is_main or self.tokenizer is None or not self.config.sample_prompt \
                or self.config.sample_tokens == 0:
            return
        prompt = torch.tensor([self.tokenizer.encode(self.config.sample_prompt)], device=self.device)
        with autocast(self.precision, self.device):
            out = generate(self.model, prompt, self.config.sample_tokens)
        record = {"step": self.step, "epoch": self.epoch,
                  "text": self.tokenizer.decode(out[0].tolist()).replace("\n", " ")}
        self.history["samples"].append(record)
        for callback in self.callbacks:
            callback.on_sample(record)

    def _install_signal_handlers(self) -> dict:
        def request_stop(signum, _frame):
            self.stop_signal = signal.Signals(signum).name

        previous = {}
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, request_stop)
        except ValueError:  # not the main thread: signals stay with the caller
            pass
        return previous
