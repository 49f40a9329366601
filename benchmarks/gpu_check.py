"""GPU check: gptcore's CUDA paths, exercised and measured in one run (a few minutes on one H100).

    PYTHONPATH=. python benchmarks/gpu_check.py --out gpu_check.json

Checks (each prints one line, PASS or FAIL, with the measured numbers):
  1. the card's bf16 matmul rate (8192^3), the peak MFU is measured against;
  2. fp32 / bf16 autocast / fp16 autocast with the gradient scaler train the same small model to the
     same losses within their precision (bf16: 8 mantissa bits, fp16: 11);
  3. generation with the KV cache gives the tokens of generation without it (fp32, greedy, across
     a window slide);
  4. a run stopped at a checkpoint and resumed ends with the weights of a straight run, bitwise (with
     dropout, so the CUDA generator state travels with the checkpoint);
  5. training throughput of GPT-2 124M at context 1024 in bf16, eager and torch.compile'd, through the
     Trainer as the pipeline uses it: tokens/s and MFU (nanoGPT's 6N + 12 L T d FLOPs per token);
  6. with --nanogpt DIR (a nanoGPT checkout carried to the machine), nanoGPT's train.py loop (clipping,
     one loss read per 10 steps, the next batch drawn during the step) with nanoGPT's GPT, eager and
     compiled, and with gptcore's model compiled: the target peer, and the Trainer's own cost beside 5;
  7. the benchmark's side-by-side table on this card (`gptcore bench`'s rows, eager: training steps and
     evaluation passes at context 1024 in fp32 (TF32) and bf16 beside HF and nanoGPT, greedy decoding with
     fp32 and bf16 weights beside HF's cached generate), for docs/benchmarks.md;
  8. the GPT-2 124M recipe (`gptcore recipe gpt2-124m`: build-nanogpt's run) through the Trainer for its first
     50 steps of 524,288 tokens, on random tokens in 10 shards read as the pipeline reads them: tokens/s and MFU,
     beside nanoGPT's compiled loop of 6.
The JSON is rewritten after each part, so a run stopped at its time limit keeps what it measured.
Uses random tokens (no corpus, no tokenizer files) and no MLflow or DVC, so it runs on a bare GPU
machine with PyTorch, safetensors, tiktoken, tqdm and numpy. On a CPU-only machine it exits 0 after
saying so (the CPU test suite runs its helpers on the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptcore.bench import SCHEDULE, flops_per_token, format_table, matmul_peak, nanogpt_twin, run_benchmark
from gptcore.data.loaders import RandomWindows
from gptcore.data.shards import ShardedTokens, write_shards
from gptcore.model.gpt import GPT, ModelConfig
from gptcore.model.sampling import generate
from gptcore.params import read_yaml, validate, with_recipe
from gptcore.settings.train import TrainConfig
from gptcore.tasks.language_modeling import LanguageModeling
from gptcore.training.callbacks import TrainerCallback
from gptcore.training.trainer import Trainer, TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(n_layers=4, n_heads=4, emb_dim=256, context_length=128)


def random_tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50257, n).astype(np.uint16)


def small_run(precision: str, steps: int = 20, drop_rate: float = 0.0, checkpoint_dir=None, callbacks=(),
              device: str = "cuda"):
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny", **SMALL, drop_rate=drop_rate))
    config = TrainConfig(epochs=None, max_steps=steps, batch_size=8, windows="random", peak_lr=1e-3,
                         warmup_steps=2, eval_freq=10, eval_iter=2, precision=precision, device=device,
                         sample_tokens=0, checkpoint_every=0, seed=1)
    trainer = Trainer(model, config, LanguageModeling(random_tokens(200_000), random_tokens(20_000, 1)),
                      checkpoint_dir=checkpoint_dir, callbacks=callbacks)
    return trainer


def check_precisions(device: str) -> dict:
    losses = {precision: [s["train_loss"] for s in small_run(precision, device=device).fit()["steps"]]
              for precision in ("fp32", "bf16", "fp16")}
    reference = np.array(losses["fp32"])
    gaps = {p: float(np.max(np.abs(np.array(losses[p]) - reference) / reference)) for p in ("bf16", "fp16")}
    bounds = {"bf16": 2e-2, "fp16": 5e-3}  # relative: ~2^-8 and ~2^-11 rounding, grown over 20 steps
    return {"losses": losses, "max_relative_gap": gaps, "bounds": bounds,
            "passed": all(gaps[p] <= bounds[p] for p in gaps)}


def check_kv_cache(device: str) -> dict:
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny", **SMALL, drop_rate=0.0)).to(device).eval()
    prompt = torch.from_numpy(random_tokens(20, 2).astype(np.int64))[None].to(device)
    with torch.no_grad():
        cached = generate(model, prompt, 200, use_cache=True)  # 220 tokens: the 128 window slides
        uncached = generate(model, prompt, 200, use_cache=False)
    same = int((cached == uncached).sum()) - prompt.numel()
    return {"tokens": 200, "equal_tokens": same, "passed": same == 200}


class StopAt(TrainerCallback):
    """Asks the trainer to stop after a given step, as a SIGTERM would."""

    def __init__(self, trainer: Trainer, step: int):
        self.trainer, self.step = trainer, step

    def on_step(self, record):
        if record["step"] == self.step:
            self.trainer.stop_signal = "SIGTERM"


def check_resume(device: str, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        straight = small_run(precision, steps=8, drop_rate=0.1, device=device)
        straight.fit()
        interrupted = small_run(precision, steps=8, drop_rate=0.1, checkpoint_dir=Path(folder), device=device)
        interrupted.callbacks.append(StopAt(interrupted, 4))
        try:
            interrupted.fit()
        except TrainingInterrupted:
            pass
        resumed = small_run(precision, steps=8, drop_rate=0.1, checkpoint_dir=Path(folder), device=device)
        assert resumed.resume() and resumed.step == 4
        resumed.fit()
        a, b = straight.model.state_dict(), resumed.model.state_dict()
        differing = [name for name in a if not torch.equal(a[name], b[name])]
    return {"precision": precision, "differing_tensors": differing, "passed": not differing}


def mfu(model, config: ModelConfig, tokens_per_second: float, peak_tflops: float) -> float:
    """Achieved over peak FLOP/s, by nanoGPT's count for any of the models (a tied head counted once)."""
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return flops_per_token(config, n) * tokens_per_second / (peak_tflops * 1e12)


def train_throughput(device: str, compile_model: bool, peak_tflops: float, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("gpt2-small", context_length=1024, drop_rate=0.0))
    config = TrainConfig(epochs=None, max_steps=steps, batch_size=batch, windows="random", peak_lr=6e-4,
                         warmup_steps=2, eval_freq=10 ** 6, eval_iter=1, precision="bf16", device=device,
                         compile=compile_model, sample_tokens=0, weight_decay_on="matrices")
    trainer = Trainer(model, config, LanguageModeling(random_tokens(5_000_000), random_tokens(100_000, 1)))
    started = time.perf_counter()
    history = trainer.fit()
    wall = time.perf_counter() - started
    seconds = [s["step_seconds"] for s in history["steps"]]
    steady = statistics.median(seconds[len(seconds) // 2:])
    tokens_per_second = batch * 1024 / steady
    return {"compile": compile_model, "batch": batch, "context": 1024, "steps": steps,
            "first_step_seconds": seconds[0], "median_step_seconds": steady, "tokens_per_second": tokens_per_second,
            "mfu": mfu(model, model.config, tokens_per_second, peak_tflops), "wall_seconds": wall,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30}


def loop_throughput(model, config: ModelConfig, device: str, compile_model: bool, peak_tflops: float, batch: int,
                    steps: int, precision: str = "bf16", grad_clip: float = 1.0, log_interval: int = 10) -> dict:
    """nanoGPT's train.py training loop around a model whose forward(idx, targets) gives (logits, loss):
    autocast, fused AdamW, the next batch drawn (pinned, copied without blocking) while the step runs, the
    gradient clipped at grad_clip, the loss read every log_interval steps (the loop's only host sync).
    Tokens/s over the steps between the second read and the last (compile and warm-up come before), MFU by
    the FLOP count of the Trainer's rows."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=True)
    step_model = torch.compile(model) if compile_model else model
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=precision == "bf16")
    context = config.context_length
    windows = RandomWindows(random_tokens(1_000_000), context, batch_size=batch, seed=0,
                            pin_memory=torch.device(device).type == "cuda")  # train.py's get_batch

    def get_batch(step: int):  # contiguous, as train.py stacks them (its forward views the targets)
        return tuple(t.to(device, non_blocking=True).contiguous() for t in windows.batch(step))

    started, reads = time.perf_counter(), []  # (step, time) after each loss read
    inputs, targets = get_batch(0)
    for step in range(steps):
        with autocast:
            _, loss = step_model(inputs, targets)
        inputs, targets = get_batch(step + 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_interval == 0 or step == steps - 1:
            loss.item()
            reads.append((step, time.perf_counter()))
    if len(reads) < 3:
        raise ValueError(f"{steps} steps give {len(reads)} loss reads at log_interval {log_interval}; need 3")
    (first_step, first_time), (last_step, last_time) = reads[1], reads[-1]
    step_seconds = (last_time - first_time) / (last_step - first_step)
    tokens_per_second = batch * context / step_seconds
    return {"compile": compile_model, "batch": batch, "context": context, "steps": steps, "grad_clip": grad_clip,
            "log_interval": log_interval, "first_step_seconds": reads[0][1] - started, "step_seconds": step_seconds,
            "tokens_per_second": tokens_per_second,
            "mfu": mfu(model, config, tokens_per_second, peak_tflops)}


def recipe_throughput(device: str, peak_tflops: float, steps: int, folder: Path, **overrides) -> dict:
    """The GPT-2 124M recipe's params (params.yaml with the recipe applied, overrides after it: "train.batch_size"
    = 2, say) through the Trainer for `steps` steps without evaluations, on random tokens cut into 10 shards and read
    by ShardedTokens; tokens/s over the second half of the steps and MFU."""
    params = validate(with_recipe("gpt2-124m", read_yaml(REPO / "params.yaml"), **overrides | {
        "train.max_steps": steps, "train.warmup_steps": 1, "train.eval_freq": 10 ** 6, "train.sample_tokens": 0,
        "train.checkpoint_every": 0, "train.device": device}), "the recipe")
    config, train = params.model_config, params.train
    tokens_per_step = train.batch_size * train.grad_accum_steps * config.context_length
    paths = write_shards(random_tokens(tokens_per_step * (steps + 1)), folder, "train", 10)
    torch.manual_seed(train.seed)
    model = GPT(config)
    trainer = Trainer(model, train, LanguageModeling(ShardedTokens(paths), random_tokens(4 * 1024 * 64, 1)))
    history = trainer.fit()
    seconds = [s["step_seconds"] for s in history["steps"]]
    steady = statistics.median(seconds[len(seconds) // 2:])
    return {"steps": steps, "tokens_per_step": tokens_per_step, "batch_size": train.batch_size,
            "grad_accum_steps": train.grad_accum_steps, "compile": train.compile,
            "precision": trainer.runtime.precision,
            "first_step_seconds": seconds[0], "median_step_seconds": steady,
            "tokens_per_second": tokens_per_step / steady,
            "mfu": mfu(model, config, tokens_per_step / steady, peak_tflops)}


def side_by_side(device: str, nanogpt: Path | None, *, preset: str = "gpt2-small", context: int = 1024,
                 rounds: int = SCHEDULE.rounds, max_rounds: int = SCHEDULE.max_rounds,
                 precisions=("fp32", "bf16")) -> dict:
    """`gptcore bench`'s side-by-side rows on this device, without MLflow (a bare GPU machine has none)."""
    return run_benchmark((context,), rounds=rounds, max_rounds=max_rounds, device_name=device, tokenize_mb=0,
                         precisions=precisions, preset=preset, nanogpt=nanogpt, tracking=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--nanogpt", type=Path, default=None,
                        help="a nanoGPT checkout (carried to the GPU machine): its GPT trained beside gptcore's")
    args = parser.parse_args()

    def save(result: dict):
        Path(args.out).write_text(json.dumps(result, indent=2))

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run it on a GPU machine)")
        return 0
    device = "cuda"
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    print(f"{result['gpu']}, torch {result['torch']}, CUDA {result['cuda']}", flush=True)
    fastest = matmul_peak(torch.bfloat16, torch.device(device))
    result["bf16_matmul_tflops"] = peak = fastest["flops"] / 1e12
    print(f"bf16 matmul peak ({fastest['shape']}): {peak:.0f} TFLOP/s", flush=True)
    checks = [("precisions", lambda: check_precisions(device)), ("kv_cache", lambda: check_kv_cache(device)),
              ("resume_fp32", lambda: check_resume(device, "fp32")),
              ("resume_bf16", lambda: check_resume(device, "bf16"))]
    failed = 0
    for name, check in checks:
        try:
            outcome = check()
        except Exception as error:  # report and go on: one broken path must not hide the others
            outcome = {"passed": False, "error": f"{type(error).__name__}: {error}"}
        result[name] = outcome
        failed += not outcome["passed"]
        shown = {k: v for k, v in outcome.items() if k != "losses"}
        print(f"{'PASS' if outcome['passed'] else 'FAIL'} {name}: {json.dumps(shown)}", flush=True)
        save(result)
    result["throughput"] = []
    for compile_model in (False, True):
        try:
            row = train_throughput(device, compile_model, peak, args.batch, args.steps)
        except Exception as error:
            row, failed = {"compile": compile_model, "error": f"{type(error).__name__}: {error}"}, failed + 1
        result["throughput"].append(row)
        print(f"train 124M ctx 1024 bf16 {'compiled' if compile_model else 'eager'}: {json.dumps(row)}", flush=True)
        save(result)
    if args.nanogpt is not None:  # nanoGPT's train.py loop: nanoGPT's GPT, then gptcore's model in it
        result["nanogpt_loop"] = []
        for name, compile_model in (("nanogpt", False), ("nanogpt", True), ("gptcore", True)):
            torch.manual_seed(0)
            config = ModelConfig.from_preset("gpt2-small", context_length=1024, drop_rate=0.0)
            try:
                model = nanogpt_twin(args.nanogpt, config) if name == "nanogpt" else GPT(config)
                row = {"model": name, **loop_throughput(model, config, device, compile_model, peak, args.batch,
                                                        args.steps)}
            except Exception as error:
                row = {"model": name, "compile": compile_model, "error": f"{type(error).__name__}: {error}"}
            result["nanogpt_loop"].append(row)
            print(f"{name} 124M ctx 1024 bf16 {'compiled' if compile_model else 'eager'} in nanoGPT's train.py loop: "
                  f"{json.dumps(row)}", flush=True)
            save(result)
    try:
        with tempfile.TemporaryDirectory() as folder:
            result["recipe"] = recipe_throughput(device, peak, 50, Path(folder))
        print(f"GPT-2 124M recipe, first 50 steps: {json.dumps(result['recipe'])}", flush=True)
    except Exception as error:
        result["recipe"], failed = {"error": f"{type(error).__name__}: {error}"}, failed + 1
        print(f"GPT-2 124M recipe: {result['recipe']['error']}", flush=True)
    save(result)
    try:
        result["side_by_side"] = side_by_side(device, args.nanogpt)
        print(format_table(result["side_by_side"]), flush=True)
    except Exception as error:
        result["side_by_side"], failed = {"error": f"{type(error).__name__}: {error}"}, failed + 1
        print(f"side-by-side table: {result['side_by_side']['error']}", flush=True)
    save(result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
