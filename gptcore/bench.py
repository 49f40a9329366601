"""The benchmark: gptcore side by side with Hugging Face's GPT2LMHeadModel on this machine, in one run.

Variants are interleaved (each timed round runs every variant once) so that noise from a shared
machine hits all alike; each number is the median of the timed rounds after a warm-up round.
Results are ratios measured together, never absolute times from different runs.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from .model import GPT, ModelConfig
from .settings.model import EOT_ID, VOCAB_SIZE
from .machine import cpu_model
from .runtime import Runtime, cast_for_inference, fast_bf16, setup_runtime
from .sampling import generate


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def interleaved(variants: dict, rounds: int, device) -> dict:
    """Median seconds per variant: one warm-up round, then `rounds` rounds of every variant in turn."""
    times = {name: [] for name in variants}
    for round_index in range(rounds + 1):
        for name, fn in variants.items():
            seconds = timed(fn, device)
            if round_index:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_peak(dtype, device, max_size=4096, rounds=5) -> float:
    """FLOP/s of a square matmul: the machine's practical peak for this dtype, measured here.

    The size doubles from 256 until one product takes 50 ms (or max_size), so an emulated dtype
    (bf16 on AVX2 CPUs: ~100x slower) is measured without minutes of waiting.
    """
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        if size >= max_size or timed(lambda: a @ b, device) > 0.05:
            break
        size *= 2
    seconds = interleaved({"mm": lambda: a @ b}, rounds, device)["mm"]
    return 2 * size ** 3 / seconds


def flops_per_token(config: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B as nanoGPT's estimate_mfu: 6N + 12LHQT."""
    head_dim = config.emb_dim // config.n_heads
    return 6 * n_params + 12 * config.n_layers * config.n_heads * head_dim * config.context_length


def hf_twin(model: GPT):
    """An HF GPT2LMHeadModel with the same config and the same weights (so work and outputs match)."""
    import transformers

    from .hf import hf_config_from, hf_state_dict_from

    hf_config = {k: v for k, v in hf_config_from(model.config).items() if k not in ("model_type", "architectures")}
    twin = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config))
    twin.load_state_dict(hf_state_dict_from(model), strict=False)
    return twin.to(next(model.parameters()).device)


class TrainStep:
    def __init__(self, model, batch, runtime: Runtime, hf: bool):
        self.model, self.batch, self.runtime, self.hf = model.train(), batch, runtime, hf
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4,
                                           fused=runtime.device.type in ("cpu", "cuda"))

    def __call__(self):
        inputs, targets = self.batch
        with self.runtime.autocast():
            loss = self.model(inputs, labels=inputs).loss if self.hf else self.model(inputs, targets)[1]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def forward_only(model, inputs, runtime: Runtime):
    def run():
        with torch.no_grad(), runtime.autocast():
            model(inputs)
    model.eval()
    return run


def greedy(model, prompt, new_tokens, hf: bool):
    def run():
        if hf:
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=EOT_ID)
        else:
            generate(model, prompt, new_tokens)
    model.eval()
    return run


def bench_model(preset: str, context: int, *, precisions, batch_size: int, rounds: int, runtime: Runtime,
                peaks: dict, rows: list):
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, context_length=context, drop_rate=0.0)
    device = runtime.device
    model = GPT(config).to(device)
    twin = hf_twin(model)
    n_params = model.num_parameters()
    inputs = torch.randint(0, config.vocab_size, (batch_size, context), device=device)
    targets = torch.roll(inputs, -1, dims=1)
    tokens = inputs.numel()
    for precision in precisions:
        at_precision = replace(runtime, precision=precision)
        train = interleaved({"gptcore": TrainStep(model, (inputs, targets), at_precision, False),
                             "hf": TrainStep(twin, (inputs, targets), at_precision, True)}, rounds, device)
        evaluation = interleaved({"gptcore": forward_only(model, inputs, at_precision),
                                  "hf": forward_only(twin, inputs, at_precision)}, rounds, device)
        for name in ("gptcore", "hf"):
            achieved = flops_per_token(config, n_params) * tokens / train[name]
            rows.append({"measure": "train step", "impl": name, "context": context, "batch": batch_size,
                         "precision": precision, "tokens_per_s": tokens / train[name],
                         "tflops": achieved / 1e12, "mfu": achieved / peaks[precision]})
            rows.append({"measure": "eval forward", "impl": name, "context": context, "batch": batch_size,
                         "precision": precision, "tokens_per_s": tokens / evaluation[name]})
    return model, twin


def bench_generation(model, twin, rounds: int, device, rows: list, new_tokens=200):
    """Greedy decoding, fp32 against HF fp32, plus gptcore with bf16 weights (an inference option)."""
    import copy

    bf16_model = cast_for_inference(copy.deepcopy(model), "bf16")
    for batch in (1, 8):
        prompt = torch.randint(0, VOCAB_SIZE, (batch, 8), device=device)
        seconds = interleaved({"gptcore": greedy(model, prompt, new_tokens, False),
                               "gptcore-bf16-weights": greedy(bf16_model, prompt, new_tokens, False),
                               "hf": greedy(twin, prompt, new_tokens, True)}, rounds, device)
        for name in seconds:
            rows.append({"measure": "greedy generate", "impl": name, "context": model.config.context_length,
                         "batch": batch, "precision": "fp32", "tokens_per_s": batch * new_tokens / seconds[name]})


def bench_tokenization(corpus: Path, megabytes: int, rows: list):
    """Tokenize `megabytes` of text (corpus repeated) in a subprocess; MB/s and its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        text = corpus.read_text(encoding="utf-8")
        target = Path(tmp) / "big.txt"
        with open(target, "w", encoding="utf-8") as out:
            written = 0
            while written < megabytes * 1_000_000:
                out.write(text)
                written += len(text.encode("utf-8"))
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec
        code = ("import json,sys,time; from gptcore.token_files import tokenize_file;"
                "from gptcore.tokenizer import Tokenizer; t=Tokenizer(); s=time.perf_counter();"
                "n=tokenize_file(sys.argv[1], sys.argv[2], t, progress=False);"
                "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
                "print(json.dumps({'tokens': n, 'seconds': time.perf_counter()-s, 'rss_mb': int(hwm)/1024}))")
        out = subprocess.run([sys.executable, "-c", code, str(target), str(Path(tmp) / "big.bin")],
                             capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        rows.append({"measure": "tokenize", "impl": "gptcore", "megabytes": written / 1e6,
                     "mb_per_s": written / 1e6 / result["seconds"], "tokens_per_s": result["tokens"] / result["seconds"],
                     "peak_rss_mb": result["rss_mb"]})


def bench_tracking(rounds: int, step_seconds: float, rows: list):
    """Cost of the tracking callback per training step (batched MLflow writes), against a step's time, and
    of one system-metrics sample (collected and logged), against the default sampling interval."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from .settings import default
    from .settings.tracking import TrackingConfig
    from .tracking import Tracker, TrackingCallback

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DVC_ROOT"], previous = tmp, os.environ.get("DVC_ROOT")
        tracker = Tracker.start(TrackingConfig(experiment="bench"), "bench", {}, {"x": {"y": 1}})
        callback = TrackingCallback(tracker, log_every=10)
        record = {"step": 0, "epoch": 0, "tokens_seen": 0, "train_loss": 1.0, "lr": 1e-4, "grad_norm": 1.0,
                  "tokens_per_second": 100.0}
        steps = 10 * rounds
        started = time.perf_counter()
        for step in range(1, steps + 1):
            callback.on_step({**record, "step": step})
        per_step = (time.perf_counter() - started) / steps
        monitor = SystemMetricsMonitor(tracker.run_id, tracking_uri=tracker.uri)
        started = time.perf_counter()
        for _ in range(rounds):
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()  # the worst case: every sample written to the store at once
        per_sample = (time.perf_counter() - started) / rounds
        if previous is None:
            del os.environ["DVC_ROOT"]
        else:
            os.environ["DVC_ROOT"] = previous
    rows.append({"measure": "mlflow tracking", "impl": "gptcore", "seconds_per_step": per_step,
                 "share_of_step": per_step / step_seconds})
    interval = default(TrackingConfig.__dataclass_fields__["system_metrics_seconds"])
    rows.append({"measure": "system metrics", "impl": "gptcore", "seconds_per_sample": per_sample,
                 "interval_seconds": interval, "share_of_time": per_sample / interval})


def peak_memory_mb(device) -> float:
    """Peak of this process: CUDA max allocated, or the CPU high-water RSS (both models and optimizers)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine(device) -> str:
    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{cpu_model()}, {torch.get_num_threads()} threads"
    return f"{name}; torch {torch.__version__}; CPU capability {torch.backends.cpu.get_cpu_capability()}"


def run_benchmark(contexts=(256, 1024), *, rounds: int = 3, device_name: str = "auto", tokenize_mb: int = 20,
                  corpus: Path | None = None, precisions=None, preset: str = "gpt2-small") -> dict:
    runtime = setup_runtime(device_name, "fp32")
    device = runtime.device
    if precisions is None:  # bf16 only where it runs in hardware: emulated bf16 is ~40x slower here
        precisions = ("fp32", "bf16") if fast_bf16(device) else ("fp32",)
    peaks = {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in ("fp32", "bf16")}
    rows: list[dict] = []
    for context in contexts:
        batch = max(1, 512 // context) if device.type == "cpu" else max(1, 16384 // context)
        model, twin = bench_model(preset, context, precisions=precisions, batch_size=batch, rounds=rounds,
                                  runtime=runtime, peaks=peaks, rows=rows)
        if context == contexts[0]:
            bench_generation(model, twin, rounds, device, rows)
        del model, twin
    step = next(r for r in rows if r["measure"] == "train step" and r["impl"] == "gptcore")
    bench_tracking(rounds, step["batch"] * step["context"] / step["tokens_per_s"], rows)
    if corpus is not None and tokenize_mb:
        bench_tokenization(corpus, tokenize_mb, rows)
    return {"machine": machine(device), "device": device.type, "rounds": rounds, "preset": preset,
            "matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
            "peak_memory_mb": peak_memory_mb(device), "rows": rows}


def ratio_rows(result: dict) -> list[str]:
    """gptcore / HF ratio for each measure measured on both."""
    lines = []
    rows = result["rows"]
    for row in rows:
        if not row["impl"].startswith("gptcore") or "tokens_per_s" not in row or row["measure"] == "tokenize":
            continue
        peer = next((r for r in rows if r["impl"] == "hf" and all(r.get(k) == row.get(k)
                     for k in ("measure", "context", "batch", "precision"))), None)
        if peer:
            bf16_weights = row["impl"].endswith("bf16-weights")
            measure = row["measure"] + (" (bf16 weights)" if bf16_weights else "")
            precision = "bf16" if bf16_weights else row["precision"]
            lines.append(f"| {measure} | {row['context']} | {row['batch']} | {precision} | "
                         f"{row['tokens_per_s']:.1f} | {peer['tokens_per_s']:.1f} | "
                         f"{row['tokens_per_s'] / peer['tokens_per_s']:.2f}x | "
                         + (f"{row['mfu'] * 100:.1f} % / {peer['mfu'] * 100:.1f} %" if "mfu" in row else "") + " |")
    return lines


def format_table(result: dict) -> str:
    peaks = result["matmul_peak_tflops"]
    lines = [f"Machine: {result['machine']}",
             f"Matmul peak measured here: fp32 {peaks['fp32'] * 1000:.0f} GFLOP/s, bf16 {peaks['bf16'] * 1000:.0f} GFLOP/s",
             "", "| measure | context | batch | precision | gptcore tokens/s | HF tokens/s | ratio | MFU gptcore / HF |",
             "|---|---|---|---|---|---|---|---|", *ratio_rows(result)]
    for row in result["rows"]:
        if row["measure"] == "tokenize":
            lines.append(f"\nTokenization: {row['mb_per_s']:.2f} MB/s ({row['tokens_per_s']:,.0f} tokens/s) on "
                         f"{row['megabytes']:.0f} MB, peak RSS {row['peak_rss_mb']:.0f} MB")
        if row["measure"] == "mlflow tracking":
            lines.append(f"\nMLflow tracking: {row['seconds_per_step'] * 1000:.2f} ms per step = "
                         f"{row['share_of_step'] * 100:.2f} % of a {result['preset']} training step")
        if row["measure"] == "system metrics":
            lines.append(f"\nSystem metrics: {row['seconds_per_sample'] * 1000:.1f} ms per sample = "
                         f"{row['share_of_time'] * 100:.3f} % of the time at one sample every "
                         f"{row['interval_seconds']} s")
    lines.append(f"\nPeak memory of the benchmark process: {result['peak_memory_mb']:.0f} MB")
    return "\n".join(lines)
