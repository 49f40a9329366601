"""The training loop: AdamW, warmup + cosine LR, clipping, accumulation, mixed precision, exact resume.

`train_step` is one optimizer step; `Trainer.fit` is the book's train_model around it: evaluate every
eval_freq steps, sample at each epoch end, checkpoint, stop cleanly on SIGTERM. It serves every task:
the task (gptcore.training.task, implemented in gptcore.tasks) gives the batches, the module whose forward
returns the loss, what evaluation measures and the zero-shot benchmarks run every so many steps, if any.
Everything it reports goes to callbacks (gptcore.training.callbacks). Under torchrun the same loop runs
DDP: each process trains on its shard of every global batch, losses are averaged over the processes,
and only rank 0 calls the callbacks and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data.loaders import to_device
from ..errors import ConfigError, GptcoreError
from ..formats.model_folder import CheckpointError
from ..model.runtime import Runtime, setup_runtime
from ..model.sampling import generate
from ..settings.train import TrainConfig
from . import distributed
from .checkpoint import latest_checkpoint, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .schedule import learning_rate
from .task import Task


class NonFiniteLossError(GptcoreError):
    pass


class TrainingInterrupted(GptcoreError):
    """SIGTERM or Ctrl-C: a checkpoint was saved, the run can resume (the stage still exits 1, so DVC
    does not record it as done)."""


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter (the book) or on 2-D tensors only (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.weight_decay_on == "all":
        groups = [{"params": params, "weight_decay": config.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(config.beta1, config.beta2), fused=fused)


def train_step(model, optimizer, micro_batches, *, runtime: Runtime, max_grad_norm: float,
               scaler: torch.amp.GradScaler | None = None, ddp: bool = False, step: int = 0) -> dict:
    """One optimizer step over the micro-batches: forward and backward of each (gradients averaged over
    the accumulation), clipping at max_grad_norm (inf: measure only), the finite-loss check, the update.
    A micro-batch is the model's positional arguments (inputs, then targets); its forward returns
    (outputs, loss).

    The loss stays on the device until the update is due: the loss and the norm are read together, the
    step's one host sync (none per micro-batch).
    Returns the step's loss (mean over micro-batches and processes), gradient norm before clipping and
    tokens (all processes).
    """
    ranks = distributed.current()
    # float64 sums the float32 losses as Python floats would (MPS has no float64)
    loss_sum = torch.zeros((), dtype=torch.float32 if runtime.device.type == "mps" else torch.float64,
                           device=runtime.device)
    for index, batch in enumerate(micro_batches):
        # DDP: average gradients once, after the last micro-batch
        accumulate_only = ddp and index < len(micro_batches) - 1
        with model.no_sync() if accumulate_only else contextlib.nullcontext():
            with runtime.autocast():
                _, loss = model(*to_device(batch, runtime.device))
            scaled = loss / len(micro_batches)
            (scaler.scale(scaled) if scaler else scaled).backward()
        loss_sum += loss.detach()
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    # one read of both: the step's only wait for the device (an idle GPU until the next launch)
    loss_sum, grad_norm = torch.stack([loss_sum, grad_norm.to(loss_sum.dtype)]).tolist()
    (loss_sum,) = distributed.all_reduce_sum([loss_sum], runtime.device)
    train_loss = loss_sum / (len(micro_batches) * ranks.world_size)
    if not math.isfinite(train_loss):
        raise NonFiniteLossError(f"training loss is {train_loss} at step {step}; stopped without saving, the last "
                                 f"good checkpoint is kept. Lower train.peak_lr or use precision fp32/bf16")
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = sum(batch[0].shape[0] * batch[0].shape[1] for batch in micro_batches) * ranks.world_size
    return {"train_loss": train_loss, "grad_norm": grad_norm, "tokens": tokens}


class Trainer:
    def __init__(self, model: torch.nn.Module, config: TrainConfig, task: Task, *, tokenizer=None,
                 checkpoint_dir=None, callbacks=()):
        self.ranks = ranks = distributed.current()
        self.config, self.tokenizer = config, tokenizer
        self.callbacks = list(callbacks) if ranks.is_main else []
        self.runtime = setup_runtime(config.device, config.precision, config.threads,
                                     local_rank=ranks.local_rank if ranks.enabled else None,
                                     processes_here=ranks.local_world_size, processes=ranks.world_size)
        self.model = model.to(self.runtime.device)
        self.task = task
        # pinned host memory: host-to-GPU copies overlap the step
        task.bind(self.model, config, self.runtime, ranks, pin_memory=self.runtime.device.type == "cuda")
        self.train_loader = task.train_loader
        self.steps_per_epoch = len(self.train_loader) // config.grad_accum_steps
        if self.steps_per_epoch == 0 and not task.draws_at_random:  # max_steps would not help: a step needs them all
            raise ConfigError(f"one epoch gives {len(self.train_loader)} batches, fewer than train.grad_accum_steps "
                              f"({config.grad_accum_steps}); lower it or the batch size, or add data")
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.plan = self.make_plan(model)
        self.optimizer = build_optimizer(self.model, config, self.runtime.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.runtime.precision == "fp16" else None
        # what the loop calls: the model, compiled and/or wrapped by DDP (which averages gradients)
        module = task.training_module(self.model)
        self.training_model = torch.compile(module) if config.compile else module
        if ranks.enabled:
            device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            self.training_model = DistributedDataParallel(self.training_model, device_ids=device_ids)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.step = self.epoch = self.batches_in_epoch = self.tokens_seen = 0
        self.history = {"steps": [], "evals": [], "epochs": [], "samples": [], "zero_shot": []}
        self.stop_signal = None
        self._epoch_batches = None

    def make_plan(self, model) -> dict:
        """What the run will do: its steps (and epochs), the rows and tokens of a step, the tokens in all (an
        upper bound where rows vary). Refused when the schedule cannot run it: a warmup longer than the run, or
        counts beyond the 64-bit integers the samplers, checkpoints and MLflow's steps hold."""
        config, steps = self.config, self.total_steps
        rows = config.batch_size * config.grad_accum_steps * self.ranks.world_size
        row_tokens = self.task.row_tokens or model.config.context_length
        plan = {"steps": steps, "epochs": None if self.task.draws_at_random else steps / self.steps_per_epoch,
                "steps_per_epoch": None if self.task.draws_at_random else self.steps_per_epoch, "rows_per_step": rows,
                "row_tokens": row_tokens, "rows_vary": self.task.row_tokens is None, "tokens": steps * rows * row_tokens}
        length = f"train.max_steps = {config.max_steps}" if config.max_steps else f"train.epochs = {config.epochs}"
        if plan["tokens"] >= 2 ** 63:
            raise ConfigError(f"{length} plans {steps:,} steps of {rows * row_tokens:,} tokens, more than a run's "
                              "64-bit counters hold; lower it")
        if config.warmup_steps > steps:
            raise ConfigError(f"train.warmup_steps = {config.warmup_steps} is more than the run's {steps:,} steps "
                              f"({length}): the warmup would outlast the run; lower it")
        return plan

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        with self._signals_request_stop():
            for callback in self.callbacks:
                callback.on_train_start(self.step, self.plan)
            self._fit()
            for callback in self.callbacks:
                callback.on_train_end(self.history)
        return self.history

    def _fit(self):
        config = self.config
        self.model.train()
        while self.step < self.total_steps:
            started = time.perf_counter()
            lr = learning_rate(self.step, self.total_steps, peak_lr=config.peak_lr, initial_lr=config.initial_lr,
                               min_lr=config.min_lr, warmup_steps=config.warmup_steps,
                               cosine_decay=config.cosine_decay)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            micro_batches = [self.next_batch(index) for index in range(config.grad_accum_steps)]
            result = train_step(self.training_model, self.optimizer, micro_batches, runtime=self.runtime,
                                max_grad_norm=self.max_grad_norm(), scaler=self.scaler, ddp=self.ranks.enabled,
                                step=self.step + 1)
            self.step += 1
            self.tokens_seen += result["tokens"]
            seconds = time.perf_counter() - started
            self._report("on_step", {"step": self.step, "epoch": self.epoch, "tokens_seen": self.tokens_seen,
                                     "train_loss": result["train_loss"], "lr": lr, "grad_norm": result["grad_norm"],
                                     "step_seconds": seconds, "tokens_per_second": result["tokens"] / seconds})
            if self.step >= config.eval_offset and (self.step - config.eval_offset) % config.eval_freq == 0 \
                    or self.step == self.total_steps:
                self._evaluate()
            probe = self.task.zero_shot
            if probe and (self.step % probe.every == 0 or self.step == self.total_steps):
                self._report("on_zero_shot", {"step": self.step, "tokens_seen": self.tokens_seen,
                                              **probe(self.model, self.runtime)})
            if not self.task.draws_at_random and \
                    self.batches_in_epoch >= self.steps_per_epoch * config.grad_accum_steps:
                self._end_epoch()
            self._stop_if_signalled()
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        if not self.history["samples"] or self.history["samples"][-1]["step"] != self.step:
            self._sample()  # random windows have no epoch ends: sample once at the end
        self.save_checkpoint()

    def max_grad_norm(self) -> float:
        """The clipping threshold of this step; inf measures the norm and scales by 1."""
        config = self.config
        clipping = config.max_grad_norm > 0 and not (config.clip_after_warmup and self.step < config.warmup_steps)
        return config.max_grad_norm if clipping else float("inf")

    def _report(self, event: str, record: dict):
        self.history[{"on_step": "steps", "on_eval": "evals", "on_epoch": "epochs", "on_sample": "samples",
                      "on_zero_shot": "zero_shot"}[event]].append(record)
        for callback in self.callbacks:
            getattr(callback, event)(record)

    def _evaluate(self):
        self._report("on_eval", {"step": self.step, "tokens_seen": self.tokens_seen,
                                 **self.task.evaluate(self.model, self.runtime, self.config.eval_iter)})

    def _end_epoch(self):
        measured = self.task.evaluate_epoch(self.model, self.runtime, self.config.eval_iter)
        if measured:
            self._report("on_epoch", {"step": self.step, "epoch": self.epoch, "tokens_seen": self.tokens_seen,
                                      **measured})
        self._sample()
        self.epoch += 1
        self.batches_in_epoch = 0
        self._epoch_batches = None

    def _sample(self):
        if not self.ranks.is_main or self.tokenizer is None or not self.config.sample_prompt \
                or self.config.sample_tokens == 0:
            return
        prompt = torch.tensor([self.tokenizer.encode(self.config.sample_prompt)], device=self.runtime.device)
        with self.runtime.autocast():
            out = generate(self.model, prompt, self.config.sample_tokens)
        self._report("on_sample", {"step": self.step, "epoch": self.epoch,
                                   "text": self.tokenizer.decode(out[0].tolist()).replace("\n", " ")})

    # -- data ----------------------------------------------------------------------------------------
    def next_batch(self, micro_step: int):
        """The next training micro-batch; its content depends only on the position, so resume is exact."""
        if self.task.draws_at_random:
            return self.task.random_batch(self.step * self.config.grad_accum_steps + micro_step)
        if self._epoch_batches is None:
            self.train_loader.sampler.set_position(self.epoch, self.batches_in_epoch)
            self._epoch_batches = iter(self.train_loader)
        self.batches_in_epoch += 1
        return next(self._epoch_batches)

    # -- state, checkpoints and signals ----------------------------------------------------------------
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
        self.history = {"epochs": [], "zero_shot": [], **state["history"]}
        if len(state["rng"]) != self.ranks.world_size:
            raise CheckpointError(f"checkpoint {folder} was written by {len(state['rng'])} process(es), this run "
                                  f"has {self.ranks.world_size}; run with {len(state['rng'])} (train.nproc) or "
                                  f"delete {self.checkpoint_dir} to start over")
        restore_rng_states(state["rng"][self.ranks.rank])
        return True

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint (rank 0; every process must call it under DDP); its folder on rank 0."""
        if self.checkpoint_dir is None:
            return None
        state, path = self.state_dict(), None
        if self.ranks.is_main:
            path = save_checkpoint(self.checkpoint_dir, self.model, state)
        distributed.barrier()
        return path

    def _stop_if_signalled(self):
        # every process stops at the same step when any of them was signalled
        if distributed.all_reduce_sum([float(self.stop_signal is not None)], self.runtime.device)[0]:
            self.save_checkpoint()
            where = (f"checkpoint saved in {self.checkpoint_dir}, run again to resume" if self.checkpoint_dir
                     else "no checkpoint folder set")
            raise TrainingInterrupted(f"stopped by {self.stop_signal or 'a signal to another process'} at step "
                                      f"{self.step}; {where}")

    @contextlib.contextmanager
    def _signals_request_stop(self):
        """SIGTERM and Ctrl-C set stop_signal (the loop stops after the step); the caller's handlers return
        afterwards. Off the main thread signals stay with the caller."""
        def request_stop(signum, _frame):
            self.stop_signal = signal.Signals(signum).name

        previous = {}
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, request_stop)
        except ValueError:  # not the main thread
            pass
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
