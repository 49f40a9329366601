"""The training loop: AdamW, warmup + cosine LR, clipping, accumulation, mixed precision, exact resume.

Everything the loop reports goes to callbacks (per step, per evaluation, per sample, per checkpoint),
so tracking plugs in without the trainer knowing about MLflow.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import latest_checkpoint, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .datasets import GPTDataset, RandomWindows, make_dataloader
from .model import GPT
from .runtime import autocast, pick_device, resolve_precision, set_cpu_threads
from .sampling import generate
from .schedule import learning_rate

SAMPLINGS = ("sliding", "random")


class NonFiniteLossError(RuntimeError):
    pass


class TrainingInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C: a checkpoint was saved, the run can resume."""


@dataclass
class TrainConfig:
    epochs: int | None = 10  # training length: epochs over the sliding windows ...
    max_steps: int | None = None  # ... or optimizer steps (wins when both are set)
    batch_size: int = 2
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
    beta1: float = 0.9
    beta2: float = 0.95
    max_grad_norm: float = 1.0  # 0 turns clipping off
    eval_freq: int = 5
    eval_iter: int = 5
    sample_prompt: str = "Every effort moves you"
    sample_tokens: int = 50
    precision: str = "auto"  # auto: bf16 where the hardware runs it fast, else fp32
    compile: bool = False
    device: str = "auto"
    seed: int = 123
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at the end (and on SIGTERM)
    threads: int | None = None  # CPU intra-op threads; None = one per physical core


def build_optimizer(model: GPT, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D tensors (matmuls, embeddings) only, as nanoGPT does."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(config.beta1, config.beta2), fused=fused)


@torch.no_grad()
def evaluate_loss(model: GPT, batches, num_batches: int | None, precision: str, device: torch.device) -> float:
    """Mean loss over the first num_batches batches (all when None), as the seed's calc_loss_loader."""
    was_training = model.training
    model.eval()
    losses = []
    for index, (inputs, targets) in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            break
        with autocast(precision, device):
            _, loss = model(inputs.to(device), targets.to(device))
        losses.append(loss.item())
    model.train(was_training)
    return sum(losses) / len(losses) if losses else float("nan")


class TrainerCallback:
    def on_step(self, record: dict): ...

    def on_eval(self, record: dict): ...

    def on_sample(self, record: dict): ...

    def on_checkpoint(self, path: Path, step: int): ...

    def on_train_end(self, history: dict): ...


class PrintProgress(TrainerCallback):
    """The seed's console log: losses at each evaluation, the sample text at each epoch end."""

    def on_eval(self, record: dict):
        print(f"step {record['step']:6d} | tokens {record['tokens_seen']:9,d} | train loss "
              f"{record['train_loss']:.3f} | val loss {record['val_loss']:.3f}", flush=True)

    def on_sample(self, record: dict):
        print(f"epoch {record['epoch'] + 1} sample: {record['text']}", flush=True)


class Trainer:
    def __init__(self, model: GPT, config: TrainConfig, train_tokens: np.ndarray, val_tokens: np.ndarray,
                 tokenizer=None, checkpoint_dir=None, callbacks=()):
        if config.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {config.sampling!r}")
        self.config, self.tokenizer, self.callbacks = config, tokenizer, list(callbacks)
        self.device = pick_device(config.device)
        if self.device.type == "cpu":
            set_cpu_threads(config.threads)
        self.precision = resolve_precision(config.precision, self.device)
        self.model = model.to(self.device)
        context = model.config.context_length
        self.train_windows = GPTDataset(train_tokens, context, config.stride or context, "train")
        self.val_windows = GPTDataset(val_tokens, context, context, "validation")
        self.train_loader = make_dataloader(self.train_windows, config.batch_size, config.shuffle,
                                            config.drop_last, config.seed, "train")
        if config.sampling == "random":
            self.random_windows = RandomWindows(train_tokens, context, config.batch_size, config.seed)
        self.steps_per_epoch = len(self.train_loader) // config.grad_accum_steps
        if self.steps_per_epoch == 0 and config.max_steps is None:
            raise ValueError(f"one epoch gives {len(self.train_loader)} batches, fewer than grad_accum_steps "
                             f"({config.grad_accum_steps}); lower it or set max_steps")
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(self.model, config, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.step = self.epoch = self.batches_in_epoch = self.tokens_seen = 0
        self.history = {"steps": [], "evals": [], "samples": []}
        self.stop_signal = None
        self._epoch_batches = None

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "tokens_seen": self.tokens_seen, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {}, "rng": rng_states(),
                "history": self.history, "train_config": asdict(self.config)}

    def resume(self) -> bool:
        """Continue from the latest checkpoint, if there is one; corrupted ones raise CheckpointError."""
        folder = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        if folder is None:
            return False
        state = load_checkpoint(folder, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batches_in_epoch, self.tokens_seen = state["batches_in_epoch"], state["tokens_seen"]
        self.history = state["history"]
        restore_rng_states(state["rng"])
        return True

    def save_checkpoint(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        path = save_checkpoint(self.checkpoint_dir, self.model, self.state_dict())
        for callback in self.callbacks:
            callback.on_checkpoint(path, self.step)
        return path

    # -- data ----------------------------------------------------------------------------------------
    def next_batch(self, micro_step: int):
        """The next training micro-batch; its content depends only on the position, so resume is exact."""
        if self.config.sampling == "random":
            return self.random_windows.batch(self.step * self.config.grad_accum_steps + micro_step)
        if self._epoch_batches is None:
            self.train_loader.sampler.set_position(self.epoch, self.batches_in_epoch * self.config.batch_size)
            self._epoch_batches = iter(self.train_loader)
        self.batches_in_epoch += 1
        return next(self._epoch_batches)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        handlers = self._install_signal_handlers()
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
                with autocast(self.precision, self.device):
                    _, loss = self.forward(inputs, targets)
                scaled = loss / config.grad_accum_steps
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += loss.item()
                step_tokens += inputs.numel()
            train_loss = loss_sum / config.grad_accum_steps
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(
                    f"training loss is {train_loss} at step {self.step + 1}; stopped without saving, the last "
                    f"good checkpoint is kept. Lower train.peak_lr or use precision fp32/bf16")
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
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
            if self.stop_signal is not None:
                saved = self.save_checkpoint()
                raise TrainingInterrupted(f"stopped by {self.stop_signal} at step {self.step}; " + (
                    f"checkpoint {saved} saved, run again to resume" if saved else "no checkpoint folder set"))
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 \
                    and self.step < self.total_steps:
                self.save_checkpoint()
        if not self.history["samples"] or self.history["samples"][-1]["step"] != self.step:
            self._sample()  # random windows have no epoch ends: sample once at the end
        self.save_checkpoint()

    def _evaluate(self):
        config = self.config
        train_eval = make_dataloader(self.train_windows, config.batch_size, False, False, 0)
        val_eval = make_dataloader(self.val_windows, config.batch_size, False, False, 0, "validation")
        record = {"step": self.step, "tokens_seen": self.tokens_seen,
                  "train_loss": evaluate_loss(self.model, train_eval, config.eval_iter, self.precision,
                                              self.device),
                  "val_loss": evaluate_loss(self.model, val_eval, config.eval_iter, self.precision,
                                            self.device)}
        self.history["evals"].append(record)
        for callback in self.callbacks:
            callback.on_eval(record)

    def _sample(self):
        if self.tokenizer is None or not self.config.sample_prompt or self.config.sample_tokens == 0:
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
